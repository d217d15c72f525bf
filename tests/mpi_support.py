"""What the MPI test folders share: fail fast, and one report per job.

A test that fails on any rank aborts the whole job at once, with its report
printed first: the other ranks could otherwise wait forever in a collective
or for a message the failed rank never reaches. Ranks other than 0 print no
report of their own (a failure there still prints, through the abort).

Each folder's conftest imports the two hooks below, which pytest then runs.
"""
import sys

import pytest


@pytest.hookimpl(trylast=True)   # after the terminal reporter exists
def pytest_configure(config):
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_rank() != 0:
        reporter = config.pluginmanager.getplugin('terminalreporter')
        if reporter is not None:
            config.pluginmanager.unregister(reporter)


def pytest_runtest_logreport(report):
    from mpi4py import MPI
    if report.failed and MPI.COMM_WORLD.Get_size() > 1:
        sys.stderr.write(f'\n[rank {MPI.COMM_WORLD.Get_rank()}] {report.nodeid} failed:\n'
                         f'{report.longreprtext}\n')
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
