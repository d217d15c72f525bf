"""Parameter-server tests: run by ``mpiexec -n 3 python -m pytest tests/mpi3``
(1 server, 2 workers); they make sense at any size of at least 2 and skip at 1
(the serial run). See ``mpi_support`` for failures and reports."""
import pytest

from mpi_support import abort_on_failure, quiet_other_ranks

MPI = pytest.importorskip('mpi4py.MPI')


@pytest.hookimpl(trylast=True)   # after the terminal reporter exists
def pytest_configure(config):
    quiet_other_ranks(config, MPI)


def pytest_runtest_logreport(report):
    abort_on_failure(report, MPI)