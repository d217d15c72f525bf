"""What the MPI test folders share: fail fast, and one report per job.

A test that fails on any rank aborts the whole job at once, with its report
printed first: the other ranks could otherwise wait forever in a collective
or for a message the failed rank never reaches. Ranks other than 0 print no
report of their own (a failure there still prints, through the abort)."""
import sys


def abort_on_failure(report, MPI):
    if report.failed and MPI.COMM_WORLD.Get_size() > 1:
        sys.stderr.write(f'\n[rank {MPI.COMM_WORLD.Get_rank()}] {report.nodeid} failed:\n'
                         f'{report.longreprtext}\n')
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


def quiet_other_ranks(config, MPI):
    if MPI.COMM_WORLD.Get_rank() != 0:
        reporter = config.pluginmanager.getplugin('terminalreporter')
        if reporter is not None:
            config.pluginmanager.unregister(reporter)
