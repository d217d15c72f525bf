"""``async-layerwise``: reduce each bucket as soon as backward completes it,
and wait for it only just before the next forward pass needs it.

Layer 1's gradient is the last one backward produces and the first one the
next forward needs; with the communicator's priority scheduling its chunks
overtake those of later layers, so the next forward starts while the later
layers' gradients are still on the wire. The iterates are still exactly those
of ``sync``: layer l is updated with its own reduced gradient and the learning
rate of the iteration that produced it (fixed at ``end_iteration``), before l
computes anything with its weights.
"""
from .base import AllreduceStrategy


class AsyncLayerwise(AllreduceStrategy):
    name = 'async-layerwise'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = set()

    def end_iteration(self):
        s = self.solver
        if self.comm is None:
            s.update(scale=self.grad_scale)
            return
        if s.needs_all_gradients:
            with self.span('wait all'):
                self.comm.wait_all()
        # Fixes this iteration's learning rate for the deferred updates.
        s.begin_update(scale=self.grad_scale)
        self.pending = set(range(len(self.buckets)))

    def before_forward(self, i):
        bucket = self.needed_by.get(i)
        if bucket in self.pending:
            self._apply(bucket)
        elif self.comm is not None:
            self.comm.progress()

    def _apply(self, bucket):
        with self.span(f'wait b{bucket}', bucket=bucket):
            self.comm.wait(bucket)
        with self.span(f'update b{bucket}', bucket=bucket):
            for layer in self.buckets[bucket].layers:
                self.solver.update_layer(layer)
        self.pending.discard(bucket)

    def finish(self):
        for bucket in [b for b in self.forward_order if b in self.pending]:
            self._apply(bucket)
