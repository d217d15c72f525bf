"""MPI tests: run by ``mpiexec -n P python -m pytest tests/mpi`` and, at size 1, in
the ordinary serial run (see ``mpi_support`` for failures and reports)."""
import pytest

from mpi_support import abort_on_failure, quiet_other_ranks

MPI = pytest.importorskip('mpi4py.MPI')


@pytest.hookimpl(trylast=True)   # after the terminal reporter exists
def pytest_configure(config):
    quiet_other_ranks(config, MPI)


def pytest_runtest_logreport(report):
    abort_on_failure(report, MPI)


@pytest.fixture(params=['self', 'world'])
def comm(request):
    """Each test body runs on COMM_SELF and on COMM_WORLD (as mpi4py's own tests)."""
    return MPI.COMM_SELF if request.param == 'self' else MPI.COMM_WORLD
