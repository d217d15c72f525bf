"""MPI tests: run by ``mpiexec -n P python -m pytest tests/mpi`` and, at size 1, in
the ordinary serial run. A test that fails on any rank aborts the whole job at
once, with its report printed first: the other ranks could otherwise wait
forever in a collective the failed rank never reaches."""
import sys

import pytest

MPI = pytest.importorskip('mpi4py.MPI')


def pytest_runtest_logreport(report):
    if report.failed and MPI.COMM_WORLD.Get_size() > 1:
        sys.stderr.write(f'\n[rank {MPI.COMM_WORLD.Get_rank()}] {report.nodeid} failed:\n'
                         f'{report.longreprtext}\n')
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


@pytest.fixture(params=['self', 'world'])
def comm(request):
    """Each test body runs on COMM_SELF and on COMM_WORLD (as mpi4py's own tests)."""
    return MPI.COMM_SELF if request.param == 'self' else MPI.COMM_WORLD
