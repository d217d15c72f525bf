"""The Strategy contract: four hooks around one training iteration.

Every iteration runs through ``Solver.step``::

    net.forward(before_layer=strategy.before_forward)   # before_forward(i)
    strategy.end_forward()                              # (once per iter_size pass)
    net.backward(after_layer=strategy.after_backward)   # after_backward(i)
    strategy.end_iteration()
    solver.iter += 1

A strategy owns everything between a layer's gradient and its next use:
posting communication, waiting, and calling the solver's ``begin_update`` /
``update_layer`` (or ``update``). It must leave each layer's weights updated
before that layer's next forward, and ``finish()`` must drain whatever is in
flight (before a snapshot, a test, or the end of training).

``AllreduceStrategy`` adds the gradient communicator: buckets over the
gradient arena (see ``layerasync.comm``), the map from layers to the bucket
they complete, and the start-up checks every rank must pass.
"""
import contextlib
import time

import numpy as np

from .agree import agree, describe

__all__ = ['Strategy', 'AllreduceStrategy']


_NOT_TRACED = contextlib.nullcontext()   # what ``span`` returns when nothing is traced

class Strategy:
    name = None

    def __init__(self, solver, mpi_comm=None, argument=None, trace=None):
        """``mpi_comm`` is an mpi4py communicator, or None for one process;
        ``argument`` the value ``strategies.parse_strategy`` read after the
        colon (None for strategies that take none)."""
        self.argument = argument
        self.solver = solver
        self.net = solver.net
        self.mpi_comm = mpi_comm
        self.size = mpi_comm.Get_size() if mpi_comm is not None else 1
        self.rank = mpi_comm.Get_rank() if mpi_comm is not None else 0
        self.trace = trace
        self.comm = None      # the gradient communicator, if the strategy has one
        self.control = None   # control-path collectives (a comm.control.Control), when distributed

    def start(self, context=()):
        """Collective: called once on every rank before the first iteration.

        Distributed strategies check that every rank agrees on the run
        (``strategies.agree``: net, solver, settings, and the caller's
        ``context`` lines) and take rank 0's weights.
        """

    def before_forward(self, i):
        """Layer ``i`` is about to run forward."""

    def end_forward(self):
        """The forward pass is done (every ``iter_size`` pass)."""

    def after_backward(self, i):
        """Layer ``i``'s gradients are complete (last accumulation pass only)."""

    def end_iteration(self):
        raise NotImplementedError

    def finish(self):
        """Drain in-flight work so every weight is current (before snapshot/test/exit)."""

    def state_dict(self):
        """Rank 0, before it writes a snapshot: arrays to store with it (in-flight
        gradients); names -> arrays."""
        return {}

    def gather_state(self):
        """Collective, before a snapshot (after ``finish()``): the solver's
        histories as whole arena-shaped arrays at rank 0 when the strategy keeps
        them elsewhere (``sharded``: each rank holds its shard); None where the
        solver's own ``history`` is the state."""
        return None

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned."""

    def settings(self):
        """What must agree across ranks (checked at start-up)."""
        return {'strategy': self.name}

    def progress_hook(self):
        """A callable for long layers to run between chunks of work (see
        ``Net.set_progress``), or None when nothing needs driving."""
        return None

    def metrics(self):
        """What the strategy observes about itself, logged and written with the
        training metrics at every display (ps-async: its staleness)."""
        return {}

    def close(self):
        """Release the communicator (collective)."""

    def span(self, name, **args):
        """Record the enclosed work (a wait, an update) on the trace's compute track."""
        return _NOT_TRACED if self.trace is None else self._traced_span(name, args)

    @contextlib.contextmanager
    def _traced_span(self, name, args):
        start = time.perf_counter()
        yield
        self.trace.span('compute', name, start, time.perf_counter(), **args)


class AllreduceStrategy(Strategy):
    """A strategy that reduces buckets of the gradient arena over MPI.

    ``comm_settings`` go to ``layerasync.comm.mpi.Communicator`` (fusion_bytes,
    chunk_bytes, max_in_flight, priority, progress). Subclasses post buckets
    from ``after_backward`` and choose when to wait. A reduced bucket holds
    the *sum* over ranks: updates pass ``scale=self.grad_scale`` (1/P) to the
    solver, which folds it into the update kernel.
    """
    gradient_sets = 1   # gradient buffers held (delayed:K holds K + 1)

    def __init__(self, solver, mpi_comm=None, argument=None, trace=None, **comm_settings):
        super().__init__(solver, mpi_comm, argument, trace)
        arena = self.net.arena
        if self.gradient_sets > 1:   # refused before allocation if it cannot fit
            solver.memory.reserve(f"strategy '{self.name}'",
                                  f'{self.gradient_sets - 1} more gradient sets',
                                  (self.gradient_sets - 1) * arena.diff.nbytes)
        self.buffers = [arena.diff] + [np.zeros_like(arena.diff)
                                       for _ in range(self.gradient_sets - 1)]
        self.comm_settings = comm_settings
        self.buckets = []
        self.trigger = {}
        if mpi_comm is not None:
            self.comm = self.communicator(mpi_comm, trace, comm_settings)
            self.control = self.comm.control
            self.buckets = self.comm.gradient_buckets
            # A bucket is complete once its last layer in backward order is.
            self.trigger = {b.layers[-1]: b.index for b in self.buckets}
        # The bucket a layer's forward needs first (that of its earliest layer),
        # and the buckets in the order the next forward needs them.
        self.needed_by = {b.priority: b.index for b in self.buckets}
        self.forward_order = sorted(range(len(self.buckets)), key=lambda b: self.buckets[b].priority)
        self._gathered = None   # compression residuals gathered for a snapshot (rank 0)
        self.grad_scale = 1.0 / self.size

    def communicator(self, mpi_comm, trace, comm_settings):
        """The gradient communicator over ``mpi_comm`` (collective)."""
        from ..comm.mpi import Communicator
        return Communicator(mpi_comm, self.buffers, list(self.net.arena.segments.items()),
                            trace=trace, blobs=[(s.view, s.shape) for s in self.solver.slots],
                            **comm_settings)

    # -- hooks ------------------------------------------------------------
    def before_forward(self, i):
        if self.comm is not None:
            self.comm.progress()

    def after_backward(self, i):
        if self.comm is None:
            return
        bucket = self.trigger.get(i)
        if bucket is None:
            self.comm.progress()
        else:
            self.comm.post(bucket, self.current_buffer())

    def current_buffer(self):
        """Index of the gradient buffer backward is writing now."""
        return 0

    def progress_hook(self):
        # The poll and mpi engines only move a reduction inside MPI calls; a
        # progress thread needs no help.
        if self.comm is not None and self.comm.thread is None:
            return self.comm.progress
        return None

    def post_all(self):
        """Post every bucket (in backward order), as a plain allreduce of everything."""
        for b in range(len(self.buckets)):
            self.comm.post(b)

    def wait_all(self):
        if self.comm is not None:
            self.comm.wait_all()

    # -- start-up ---------------------------------------------------------------
    def start(self, context=()):
        """Check that all ranks agree on the run, then use rank 0's weights."""
        if self.comm is not None:
            agree(self.comm.control, describe(self.solver, self.settings(), context),
                  [self.net.arena.data])

    def settings(self):
        return {'strategy': self.name, 'argument': self.argument, 'solver': self.solver.type,
                'batch': self.net.batch_size,
                'ranks': self.size,
                # What is in force (a progress engine that fell back is seen), not what was asked.
                **(self.comm.settings if self.comm is not None else self.comm_settings)}

    # -- error feedback in snapshots (--compress topk:RATIO) ------------------------
    def _residual(self):
        codec = self.comm.codec if self.comm is not None else None
        return None if codec is None else codec.residual

    def gather_state(self):
        """Collective: each rank's compression residual (what it has not sent
        yet) to rank 0, which stores them all with the snapshot (``state_dict``)."""
        residual = self._residual()
        if residual is not None:
            self._gathered = self.control.gather(residual)
        return None

    def state_dict(self):
        gathered, self._gathered = self._gathered, None
        codec = self.comm.codec if self.comm is not None else None
        state = {f'compress/{k}': v.copy() for k, v in (codec.shared if codec else {}).items()}
        if gathered is not None:
            state.update({f'compress/residual_rank{r}': gathered[r] for r in range(len(gathered))})
        return state

    def load_state_dict(self, state):
        """The codec's state from a snapshot that holds it (none: as started):
        this rank's residual, and what every rank shares (PowerSGD's factors)."""
        codec = self.comm.codec if self.comm is not None else None
        for key, value in (codec.shared if codec else {}).items():
            if f'compress/{key}' in state:
                value[...] = state[f'compress/{key}']
        residual = self._residual()
        saved = sorted(k for k in state if k.startswith('compress/residual_rank'))
        if residual is None or not saved:
            return
        if len(saved) != self.size:
            raise ValueError(f'rank {self.rank}: the snapshot holds the compression residuals '
                             f'of {len(saved)} ranks; this run has {self.size}: resume with as '
                             'many ranks as the snapshot was taken with')
        residual[...] = state[f'compress/residual_rank{self.rank}']

    def close(self):
        if self.comm is not None:
            self.comm.close()
            self.comm = self.control = None
