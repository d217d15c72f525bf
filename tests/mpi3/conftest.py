"""Parameter-server tests: run by ``mpiexec -n 3 python -m pytest tests/mpi3``
(1 server, 2 workers); they make sense at any size of at least 2 and skip at 1
(the serial run). A test that fails on any rank aborts the whole job at once,
with its report printed first: the other ranks could otherwise wait forever
for a message or a collective the failed rank never sends."""
import sys

import pytest

MPI = pytest.importorskip('mpi4py.MPI')


def pytest_runtest_logreport(report):
    if report.failed and MPI.COMM_WORLD.Get_size() > 1:
        sys.stderr.write(f'\n[rank {MPI.COMM_WORLD.Get_rank()}] {report.nodeid} failed:\n'
                         f'{report.longreprtext}\n')
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
