"""``delayed:K``: apply each reduced gradient K iterations after it was computed.

Iteration t posts the buckets of g(t) as backward completes them, then waits
for g(t-K) — reduced during the last K iterations — and applies it:

    w(t+1) = w(t) - U(g(w(t-K)), lr(t))          (no update while t < K)

where U is the solver's rule, so with momentum
h(t+1) = m h(t) + lr(t) (g(w(t-K)) + decay w(t)) and w(t+1) = w(t) - h(t+1):
only the data gradient is stale (weight decay reads the current weights), and
the history sees the delayed gradients in order, exactly once each. K = 0
would be ``sync``.

Memory: K + 1 gradient sets, i.e. K arenas of the size of the parameters on
top of the net's own. Backward of iteration t writes set t mod (K+1); the set
freed by applying g(t-K) is exactly the one iteration t+1 writes next.

In flight at a snapshot: the K gradients not yet applied. ``finish()`` waits
for their reductions (it does not apply them); ``state_dict()`` stores them,
so a resumed run continues exactly. The last K gradients of a run are never
applied, as in any pipeline of depth K.
"""
from collections import deque

from .base import AllreduceStrategy


class Delayed(AllreduceStrategy):
    name = 'delayed'

    @property
    def delay(self):
        """K, the argument (``strategies.parse_strategy`` checked K >= 1)."""
        return self.argument

    @property
    def gradient_sets(self):
        return self.delay + 1

    def __init__(self, *args, **kwargs):
        compress = kwargs.get('compress') or ''
        if compress.startswith('powersgd'):
            raise ValueError(f'--compress {compress}: PowerSGD keeps factors that every rank must '
                             'update in the same order, and delayed:K keeps several '
                             'generations of a bucket in flight; use it with sync, layerwise '
                             'or async-layerwise')
        super().__init__(*args, **kwargs)
        # (iteration, communicator generation or None if already reduced), oldest first
        self.in_flight = deque()
        self.posts = 0

    def start(self, context=()):
        super().start(context)
        self.net.arena.use_diff(self.buffers[self.solver.iter % self.gradient_sets])

    def close(self):
        super().close()
        self.net.arena.use_diff(self.buffers[0])   # the net's own gradient arena again

    def current_buffer(self):
        return self.solver.iter % self.gradient_sets

    def end_iteration(self):
        s = self.solver
        t = s.iter
        self.in_flight.append((t, self.posts if self.comm is not None else None))
        self.posts += self.comm is not None
        if self.in_flight[0][0] == t - self.delay:
            old, generation = self.in_flight.popleft()
            if generation is not None:
                with self.span(f'wait g({old})'):
                    for b in range(len(self.buckets)):
                        self.comm.wait(b, generation)
            with self.span(f'update g({old})'):
                # The update also zeroes that set for the iteration that writes it next.
                s.update(self.buffers[old % self.gradient_sets], scale=self.grad_scale)
        self.net.arena.use_diff(self.buffers[(t + 1) % self.gradient_sets])

    def finish(self):
        self.wait_all()
        self.in_flight = deque((t, None) for t, _ in self.in_flight)

    def state_dict(self):
        self.finish()
        return {**super().state_dict(),
                **{f'delayed/grad_iter{t}': self.buffers[t % self.gradient_sets].copy()
                   for t, _ in self.in_flight}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        saved = sorted(int(k[len('delayed/grad_iter'):]) for k in state
                       if k.startswith('delayed/grad_iter'))
        now = self.solver.iter
        expected = list(range(max(0, now - self.delay), now))
        if saved != expected:
            raise ValueError(f'the snapshot holds delayed gradients of iterations {saved}, but '
                             f'delayed:{self.delay} resuming at iteration {now} needs {expected}: '
                             'resume with the delay the snapshot was taken with')
        for t in saved:
            self.buffers[t % self.gradient_sets][...] = state[f'delayed/grad_iter{t}']
            self.in_flight.append((t, None))
