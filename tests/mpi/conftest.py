"""MPI tests: run by ``mpiexec -n P python -m pytest tests/mpi`` and, at size 1, in
the ordinary serial run (see ``mpi_support`` for failures and reports)."""
import pytest

MPI = pytest.importorskip('mpi4py.MPI')

from mpi_support import pytest_configure, pytest_runtest_logreport  # noqa: E402,F401 (the hooks)


@pytest.fixture(params=['self', 'world'])
def comm(request):
    """Each test body runs on COMM_SELF and on COMM_WORLD (as mpi4py's own tests)."""
    return MPI.COMM_SELF if request.param == 'self' else MPI.COMM_WORLD
