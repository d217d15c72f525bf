"""What every test run shares.

- One BLAS thread per process unless asked otherwise: tests run several MPI
  ranks on few cores, where spinning BLAS threads slow everything down badly.
- ``@pytest.mark.torch`` marks a cross-check against PyTorch. Without torch
  it skips, unless ``TORCH`` or ``CI`` is set (to anything but ``0`` or
  ``false``, as ``make test TORCH=1`` and CI do): then it fails, so that a
  run meant to cross-check cannot pass without doing so.
- ``LAYERASYNC_TEST_RANKS=P`` (set by ``make test`` around ``mpiexec -n P``)
  is checked against the size of ``MPI.COMM_WORLD``: an ``mpiexec`` of
  another MPI than mpi4py's starts P independent one-rank runs, which would
  pass while testing no communication.
- A run in which no test passed fails (exit status 5, as when pytest collects
  nothing): every test skipped or deselected is not a pass.
"""
import os
import sys

import pytest

os.environ.setdefault('OMP_NUM_THREADS', '1')
sys.path.insert(0, os.path.dirname(__file__))


def _set(name):
    return os.environ.get(name, '') not in ('', '0', 'false')


TORCH_REQUIRED = _set('TORCH') or _set('CI')
_passed = []   # node ids of the tests that passed in this process


def pytest_configure(config):
    config.addinivalue_line('markers', 'torch: a cross-check against PyTorch (tests/conftest.py)')
    ranks = os.environ.get('LAYERASYNC_TEST_RANKS')
    if ranks:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise pytest.UsageError(f'LAYERASYNC_TEST_RANKS={ranks}, but mpi4py does not '
                                    f'import: {e}') from e
        size = MPI.COMM_WORLD.Get_size()
        if str(size) != ranks:
            library = ' '.join(MPI.Get_library_version().split()[:3])
            raise pytest.UsageError(
                f'LAYERASYNC_TEST_RANKS={ranks}, but MPI.COMM_WORLD has {size} rank(s): is '
                f'this mpiexec from the MPI that mpi4py uses ({library})?')


def pytest_runtest_setup(item):
    if item.get_closest_marker('torch') is None:
        return
    try:
        import torch  # noqa: F401
    except ImportError as e:
        if TORCH_REQUIRED:
            pytest.fail(f'{item.nodeid} is a PyTorch cross-check and TORCH or CI is set, but '
                        f'torch does not import ({e}): run make torch', pytrace=False)
        pytest.skip(f'a PyTorch cross-check, and torch does not import ({e}); make torch '
                    'installs it')


def pytest_runtest_logreport(report):
    if report.when == 'call' and report.passed:
        _passed.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == pytest.ExitCode.OK and not _passed and not session.config.option.collectonly:
        sys.stderr.write('no test passed (all skipped or deselected): failing the run\n')
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
