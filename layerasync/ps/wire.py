"""The parameter-server transport: the job's communicators and its start-up.

Only code that runs under MPI imports this module (it uses
``layerasync.comm.job``). The streams and their messages are described in
the package's docstring.
"""
import numpy as np

from ..comm import job
from ..comm.control import Control
from ..strategies.agree import agree, describe
from . import REQUEST, role

__all__ = ['Wire']


class Wire:
    """A rank's role and the job's communicators.

    Collective over ``world``: every rank builds it (it splits and duplicates
    ``world``) and calls ``free()``. ``group`` is the communicator of this
    rank's kind (the workers' one carries the trainer's control calls);
    ``grads``, ``weights``, ``clocks`` and ``control`` carry the streams;
    ``wait_all`` and ``progress`` are ``comm.job``'s, for the worker, which
    imports no MPI module itself.
    """

    def __init__(self, world, servers):
        self.role = role(world, servers)
        self.rank, self.servers, self.workers = world.Get_rank(), servers, self.role.workers
        self.describe = self.role.describe
        self.group = job.split(world, int(self.role.serving))
        self.grads, self.weights, self.clocks, self.control = (world.Dup() for _ in range(4))

    def server_rank(self, server):
        return self.workers + server

    def start(self, solver, name, staleness):
        """Collective over the job: stop every rank unless all built the same net
        and settings, then give every rank world rank 0's iteration, weights and
        solver history."""
        settings = {'strategy': name, 'staleness': staleness, 'servers': self.servers,
                    'workers': self.workers, 'solver': solver.type, 'batch': solver.net.batch_size}
        iteration = np.array([solver.iter], np.int64)
        agree(Control(self.control), describe(solver, settings),
              [iteration, solver.net.arena.data, *solver.history], self.describe)
        solver.iter = int(iteration[0])

    def ask_servers(self, kind):
        """Send request ``kind`` from this worker to every server."""
        request = np.array([kind, self.rank], np.int64)
        for s in range(self.servers):
            self.control.Send(request, self.server_rank(s), REQUEST)

    def free(self):
        for c in (self.group, self.grads, self.weights, self.clocks, self.control):
            c.Free()

    wait_all = staticmethod(job.wait_all)
    progress = staticmethod(job.progress)
