"""Which chunk to post next: the same decision on every rank.

MPI matches collectives on a communicator by the order in which each rank
issues them, so every rank must post the chunk allreduces in one common
order. Two policies give that order:

``fifo``: chunks are posted in the order they become ready. Every rank runs
the same backward pass, so that order is the same everywhere; the in-flight
limit only delays posts, never reorders them. No extra messages.

``priority``: among the chunks ready on *every* rank, the one needed first by
the next forward pass goes first. Readiness differs between ranks in time,
so the decision is taken on agreed state: each rank contributes its
per-chunk counters (times made ready, times completed) to a non-blocking
element-wise MIN allreduce — a *round* — and every rank applies the same
rule to the same result. Only then are the chosen chunks posted. This is the
negotiation of Horovod without a coordinator, in the spirit of its bit-vector
response cache.

Counters rather than flags make the rounds iteration-proof: a chunk may be
ready for generation g on one rank and already g+1 on another (``delayed:K``
keeps several generations in flight), and MIN of the counts is exactly "ready
on every rank" for each generation.
"""
from collections import deque

import numpy as np

__all__ = ['Scheduler']


class Scheduler:
    """Bookkeeping of chunk generations; no MPI in here.

    ``mark_ready(chunks)`` when a bucket's gradient is complete,
    ``completed(c)`` when a chunk's allreduce finished locally; ``next_posts()``
    (fifo) or ``round_vector()`` / ``on_round(agreed)`` (priority) return the
    ``(chunk, generation)`` pairs to post now, in order.
    """

    def __init__(self, chunks, max_in_flight, priority):
        if max_in_flight < 1:
            raise ValueError(f'max_in_flight must be at least 1, not {max_in_flight}')
        self.chunks = chunks
        self.max_in_flight = max_in_flight
        self.priority = priority
        n = len(chunks)
        self.ready_gen = np.zeros(n, np.int64)   # times made ready here
        self.posted_gen = np.zeros(n, np.int64)  # times posted (the same on every rank)
        self.done_gen = np.zeros(n, np.int64)    # times completed here
        self.in_flight = 0                       # posted here, not completed here
        self.queue = deque()                     # fifo: (chunk, generation) in ready order
        self._order = sorted(range(n), key=lambda c: chunks[c].priority)
        self.agreed_pending = False

    def mark_ready(self, chunk_ids):
        for c in chunk_ids:
            if not self.priority:
                self.queue.append((c, int(self.ready_gen[c])))
            self.ready_gen[c] += 1

    def completed(self, c):
        self.done_gen[c] += 1
        self.in_flight -= 1

    # -- fifo -------------------------------------------------------------
    def next_posts(self):
        posts = []
        while self.queue and self.in_flight + len(posts) < self.max_in_flight:
            posts.append(self.queue.popleft())
        self._posted(posts)
        return posts

    # -- priority ---------------------------------------------------------
    def round_vector(self):
        """This rank's contribution to the next round: [ready counts, done counts]."""
        return np.concatenate([self.ready_gen, self.done_gen])

    def on_round(self, agreed):
        """Posts decided from a round's agreed (MIN over ranks) vector; identical everywhere."""
        n = len(self.chunks)
        ready, done = agreed[:n], agreed[n:]
        free = self.max_in_flight - int((self.posted_gen - done).sum())
        posts = []
        if free > 0:
            pending = ready - self.posted_gen
            # Older generations first (a delayed gradient is due before a fresh
            # one), then by forward priority.
            candidates = [(int(self.posted_gen[c]) + k, rank, c)
                          for rank, c in enumerate(self._order) for k in range(int(pending[c]))]
            candidates.sort()
            posts = [(c, gen) for gen, _, c in candidates[:free]]
        self._posted(posts)
        self.agreed_pending = bool((ready > self.posted_gen).any())
        return posts

    def wants_round(self):
        """Start another round? Yes while agreed work waits to be posted (the
        rounds then also report completions, which free slots), or while this
        rank knows of readiness no round has turned into a post yet. Every rank
        sees the same agreed state and, running the same backward, comes to
        know the same readiness, so they start the same rounds. Chunks merely
        in flight need none: their completion is local (``is_done``), and the
        next round carries it to every rank."""
        return self.agreed_pending or bool((self.ready_gen > self.posted_gen).any())

    # -- shared ---------------------------------------------------------------
    def _posted(self, posts):
        for c, _ in posts:
            self.posted_gen[c] += 1
        self.in_flight += len(posts)

    def is_done(self, chunk_ids, generation):
        """Have these chunks completed here for ``generation`` (0-based)?"""
        return all(self.done_gen[c] > generation for c in chunk_ids)

    def idle(self):
        return self.in_flight == 0 and not self.queue and not (self.ready_gen > self.posted_gen).any()
