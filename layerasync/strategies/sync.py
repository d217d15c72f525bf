"""``sync``: compute the whole backward pass, then reduce everything, then update.

The reference every other strategy is compared with (synchronous SGD). Its
reduction uses the same buckets and chunks as the others, all posted after
backward, so the only difference measured is *when* communication starts.
"""
from .base import AllreduceStrategy


class Sync(AllreduceStrategy):
    name = 'sync'

    def after_backward(self, i):
        """Nothing overlaps backward."""

    def before_forward(self, i):
        """Nothing is in flight during forward."""

    def end_iteration(self):
        if self.comm is not None:
            with self.span('wait all'):
                self.post_all()
                self.comm.wait_all()
        with self.span('update all'):
            self.solver.update(scale=self.grad_scale)
