"""``layerwise[:all|ordered|lazy]``: reduce each bucket as soon as backward
completes it; at the end of the iteration, wait and update.

The apply orders are the paper's three: ``all`` waits for every bucket, then
updates (one step); ``ordered`` updates bucket by bucket in the order they
were posted (backward order), waiting for each; ``lazy`` updates whichever
bucket finishes first. All three give the iterates of ``sync``: each layer's
update reads only its own reduced gradient and the iteration's learning rate.
(Gradient clipping needs the global norm, so with ``clip_gradients`` every
order waits for all buckets first.)
"""
from .base import AllreduceStrategy


class Layerwise(AllreduceStrategy):
    """``argument``: the apply order, one of ``strategies.LAYERWISE_ORDERS``."""
    name = 'layerwise'

    def end_iteration(self):
        s, comm = self.solver, self.comm
        if comm is None:
            s.update(scale=self.grad_scale)
            return
        if self.argument == 'all' or s.needs_all_gradients:
            with self.span('wait all'):
                comm.wait_all()
            with self.span('update all'):
                s.update(scale=self.grad_scale)
            return
        s.begin_update(scale=self.grad_scale)
        pending = list(range(len(self.buckets)))
        while pending:
            with self.span('wait', bucket=pending[0] if self.argument == 'ordered' else None):
                b = pending[0] if self.argument == 'ordered' else comm.wait_any(pending)
                comm.wait(b)
            with self.span(f'update b{b}', bucket=b):
                for layer in self.buckets[b].layers:
                    s.update_layer(layer)
            pending.remove(b)
