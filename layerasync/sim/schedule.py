"""Discrete-event model of training iterations on one rank: a compute thread and a link.

Every rank runs the same compute and posts the same chunks, so one rank
stands for all of them (the model has no stragglers and no skew). Two
resources work side by side:

- **compute**, sequential: forward of layers 0..L-1, backward of L-1..0, and
  the solver updates, with the waits each strategy puts between them;
- **the link**, one per rank. At most ``in_flight`` chunks are posted and not
  yet complete; when a slot is free the scheduler posts a ready chunk:
  ``fifo`` in the order they became ready, ``priority`` older generation
  first, then the chunk's forward priority. A posted chunk occupies the link
  for its *busy* time (bandwidth and reduction terms), in posting order, then
  completes after its *latency* (alpha terms), during which the link already
  serves the next posted chunk. A posted chunk cannot be overtaken; a ready
  one not yet posted can.

The priority scheduler agrees on readiness and completions in *rounds* (a small
MIN allreduce): a chunk can be posted ``round_s`` after it is ready, a
completed chunk's slot is free ``round_s`` after it completes, and a wait for
*everything* (``wait_all``) ends one round after the last completion, when all
ranks agree nothing is left. fifo has no rounds.

Assumptions: communication progresses in the background at full speed while
compute runs (a progress thread, asynchronous MPI progress or an offloading
NIC) and takes no compute time, except ``hook_s`` per layer hook of the
strategies that drive communication between layers (all but ``sync``): the
compute thread's own share of posting and progressing, 0 by default. The
strategies' waits are exactly those of ``layerasync.strategies`` (see
``iteration_ends``); an update of layer l costs ``update_s[l]``.
"""
import heapq
from collections import deque
from dataclasses import dataclass, replace

from ..strategies import known, parse_strategy
from .ps import KINDS as PS_KINDS, ps_iteration_ends

__all__ = ['Plan', 'Link', 'iteration_ends', 'steady_iteration', 'modelled_strategy', 'MODELLED']

# The strategies this model plays (the parameter servers: ``sim.ps``).
MODELLED = ('sync', 'layerwise', 'async-layerwise', 'delayed', 'sharded', 'ps-sync', 'ps-async')


@dataclass
class Plan:
    """One rank's work, in seconds: per layer (forward order) and per chunk.

    ``buckets`` and ``chunks`` are ``layerasync.comm.buckets.make_buckets``'s;
    chunk c keeps the link busy ``chunk_busy_s[c]`` and completes
    ``chunk_latency_s[c]`` later (default: no latency). ``hook_s``: compute
    time of one strategy hook that posts or progresses communication.
    ``scatter_parts`` / ``gather_parts``: (latency, busy) of each chunk's
    reduce-scatter and all-gather, for ``sharded`` (see ``sharded()``), whose
    updates cover 1/``ranks`` of each layer. For the parameter servers
    (``sim.ps``): ``ranks`` workers and ``servers`` servers, the
    ``network`` their messages cross (``server_ingress``: whether a server's
    port limits what it receives), the layers' ``param_bytes`` and the
    servers' ``update_rate`` (parameter bytes per second). ``straggler``: the
    factor by which the rank this plan stands for computes slower than the
    others (its forward and backward are already scaled).
    """
    forward_s: list
    backward_s: list
    update_s: list
    buckets: list
    chunks: list
    chunk_busy_s: list
    chunk_latency_s: list = None
    in_flight: int = 4
    priority: bool = True
    round_s: float = 0.0
    hook_s: float = 0.0
    scatter_parts: list = None
    gather_parts: list = None
    ranks: int = 1
    servers: int = 1
    network: object = None
    server_ingress: bool = True
    param_bytes: list = None
    update_rate: float = 2.5e9
    straggler: float = 1.0

    def __post_init__(self):
        if self.chunk_latency_s is None:
            self.chunk_latency_s = [0.0] * len(self.chunks)
        if self.in_flight < 1:
            raise ValueError(f'in_flight must be at least 1, not {self.in_flight}')

    @property
    def compute_s(self):
        """An iteration with no communication: what one rank takes."""
        return sum(self.forward_s) + sum(self.backward_s) + sum(self.update_s)

    def comm_alone_s(self):
        """Time to reduce every chunk of one iteration, all ready at once, without
        compute: what ``sync`` waits at the end of each iteration."""
        link = Link(self)
        for bucket in self.buckets:
            link.ready(bucket.chunks, 0, 0.0)
        done = link.wait(lambda: all(link.is_done(b.chunks, 0) for b in self.buckets), 0.0)
        return done + (self.round_s if self.priority else 0.0)   # the agreement round


    def sharded(self):
        """The plan ``sharded`` plays, as its communicator cuts it: chunks
        0..n-1 reduce-scatter the gradient, n..2n-1 all-gather the weights,
        with the same priorities (buckets likewise: B gradient buckets, then
        their B gathers). The gathers are posted at once (``Link.post``),
        outside the in-flight limit and the rounds."""
        from ..comm.buckets import Bucket, Chunk
        if self.scatter_parts is None or self.gather_parts is None:
            raise ValueError('this plan has no reduce-scatter and all-gather costs '
                             '(make_plan gives them)')
        n, nb = len(self.chunks), len(self.buckets)
        gathers = [Chunk(n + c.index, nb + c.bucket, c.start, c.stop, c.priority)
                   for c in self.chunks]
        gather_buckets = [Bucket(nb + b.index, b.layers, b.start, b.stop, b.priority,
                                 [n + c for c in b.chunks]) for b in self.buckets]
        parts = list(self.scatter_parts) + list(self.gather_parts)
        return replace(self, buckets=self.buckets + gather_buckets, chunks=self.chunks + gathers,
                       chunk_busy_s=[busy for _, busy in parts],
                       chunk_latency_s=[latency for latency, _ in parts],
                       update_s=[u / self.ranks for u in self.update_s])


def modelled_strategy(spec):
    """``layerasync.strategies.parse_strategy(spec)`` for a strategy the model plays:
    ``'delayed:2'`` -> ``('delayed', 2)``; ValueError for the others."""
    name, argument = parse_strategy(spec)
    if name not in MODELLED:
        raise ValueError(f"strategy '{spec}' is not modelled by the simulator; it models "
                         f'{known(MODELLED)}')
    return name, argument


class Link:
    """One rank's network link: chunks posted under the in-flight bound, served in turn."""

    def __init__(self, plan):
        self.plan = plan
        self.now = 0.0
        self.arrivals = deque()   # (time it may be posted, key, (chunk, generation)), time order
        self.eligible = []        # heap of (key, (chunk, generation)) that may be posted now
        self.slots = []           # heap of times at which a posted chunk's slot frees
        self.serving = []         # heap of (completion time, key, (chunk, generation))
        self.free_at = 0.0        # the link is busy until then
        self.done = {}            # (chunk, generation) -> completion time
        self.sequence = 0

    def ready(self, chunk_ids, generation, t):
        """Chunks of ``generation`` became ready on the compute thread at time ``t``."""
        self.advance(t)
        for c in chunk_ids:
            key = ((generation, self.plan.chunks[c].priority, self.sequence) if self.plan.priority
                   else (self.sequence,))
            self.sequence += 1
            self.arrivals.append((t + self.plan.round_s, key, (c, generation)))
        self.advance(t)

    def post(self, chunk_ids, generation, t):
        """Post chunks of ``generation`` at time ``t`` at once, holding no slot and
        waiting for no round (``sharded``'s gathers); the link serves them after
        what it already serves."""
        self.advance(t)
        for c in chunk_ids:
            self.free_at = max(self.now, self.free_at) + self.plan.chunk_busy_s[c]
            heapq.heappush(self.serving, (self.free_at + self.plan.chunk_latency_s[c],
                                          (generation, self.sequence), (c, generation)))
            self.sequence += 1
        self.advance(t)

    def wait(self, condition, t):
        """Time at which ``condition()`` holds, the compute thread waiting from ``t`` on."""
        self.advance(t)
        while not condition():
            if not self._next_event():
                raise RuntimeError('the model waits for a chunk that was never made ready')
        return max(t, self.now)

    def is_done(self, chunk_ids, generation):
        return all((c, generation) in self.done for c in chunk_ids)

    def advance(self, t):
        """Play every link event up to time ``t``."""
        while self._next_event(until=t):
            pass
        self.now = max(self.now, t)

    def _next_event(self, until=float('inf')):
        """Post what can be posted now, then play the next event if it is due by ``until``."""
        self._post()
        times = [self.serving[0][0]] if self.serving else []
        if self.arrivals:
            times.append(self.arrivals[0][0])
        if self.slots and self.eligible:
            times.append(self.slots[0])
        if not times or min(times) > until:
            return False
        self.now = max(self.now, min(times))
        while self.serving and self.serving[0][0] <= self.now:
            finish, _, item = heapq.heappop(self.serving)
            self.done[item] = finish
        while self.arrivals and self.arrivals[0][0] <= self.now:
            _, key, item = self.arrivals.popleft()
            heapq.heappush(self.eligible, (key, item))
        while self.slots and self.slots[0] <= self.now:
            heapq.heappop(self.slots)
        self._post()
        return True

    def _post(self):
        plan = self.plan
        while self.eligible and len(self.slots) < plan.in_flight:
            key, item = heapq.heappop(self.eligible)
            self.free_at = max(self.now, self.free_at) + plan.chunk_busy_s[item[0]]
            finish = self.free_at + plan.chunk_latency_s[item[0]]
            heapq.heappush(self.serving, (finish, key, item))
            heapq.heappush(self.slots, finish + plan.round_s)


def iteration_ends(plan, strategy, iterations):
    """Times at which each of ``iterations`` iterations ends, from time 0, under ``strategy``.

    The waits (``layerasync.strategies``): ``sync`` posts every bucket after
    backward and waits for all; ``layerwise`` posts each bucket when backward
    completes it and at the end waits for all then updates (``all``), or
    waits and updates bucket by bucket in backward order (``ordered``) or as
    they finish (``lazy``); ``async-layerwise`` waits for bucket b of iteration
    t-1 and updates it just before the forward of its first layer in
    iteration t; ``delayed:K`` posts like ``layerwise`` and at the end of t
    waits for all of g(t-K) and updates (nothing for t < K); ``sharded``: see
    ``_sharded_ends``.
    """
    kind, argument = modelled_strategy(strategy)
    if kind == 'sharded':
        return _sharded_ends(plan, iterations)
    if kind in PS_KINDS:
        return ps_iteration_ends(plan, kind, iterations)
    p, link = plan, Link(plan)
    buckets = p.buckets
    needed_by = {b.priority: b.index for b in buckets}
    trigger = {b.layers[-1]: b.index for b in buckets}

    def update(bucket_ids):
        return sum(p.update_s[layer] for b in bucket_ids for layer in buckets[b].layers)

    def wait_buckets(bucket_ids, generation, t):
        return link.wait(lambda: all(link.is_done(buckets[b].chunks, generation)
                                     for b in bucket_ids), t)

    everything = range(len(buckets))
    # sync's hooks do nothing; every other strategy posts or progresses in each.
    hook = 0.0 if kind == 'sync' else p.hook_s
    # wait_all (not a wait per bucket) needs one more round to agree it is over.
    agree = p.round_s if p.priority else 0.0
    t, ends = 0.0, []
    for it in range(iterations):
        for layer, cost in enumerate(p.forward_s):
            if kind == 'async-layerwise' and it > 0 and layer in needed_by:
                b = needed_by[layer]
                t = wait_buckets([b], it - 1, t) + update([b])
            t += hook + cost
        for layer in reversed(range(len(p.backward_s))):
            t += p.backward_s[layer] + hook
            if kind != 'sync' and layer in trigger:
                link.ready(buckets[trigger[layer]].chunks, it, t)
        if kind == 'sync':
            for b in everything:
                link.ready(buckets[b].chunks, it, t)
        if kind in ('sync', 'layerwise') and argument in (None, 'all'):
            t = wait_buckets(everything, it, t) + agree + update(everything)
        elif kind == 'layerwise' and argument == 'ordered':
            for b in everything:
                t = wait_buckets([b], it, t) + update([b])
        elif kind == 'layerwise':   # lazy: whichever is done first, in posting order on ties
            pending = list(everything)
            while pending:
                t = link.wait(lambda: any(link.is_done(buckets[b].chunks, it) for b in pending), t)
                b = next(b for b in pending if link.is_done(buckets[b].chunks, it))
                t += update([b])
                pending.remove(b)
        elif kind == 'delayed' and it >= argument:
            t = wait_buckets(everything, it - argument, t) + update(everything)
        ends.append(t)
    return ends


def _sharded_ends(plan, iterations):
    """``iteration_ends`` of ``sharded`` (``strategies.sharded``): backward posts
    each bucket's reduce-scatter when it completes the bucket; from the end of
    the iteration on, at every hook, the shards whose reduce-scatter is done
    are updated in forward order (1/P of their layers' update each) and their
    all-gathers posted; the forward of a bucket's first layer first updates
    the shards due before it (waiting for their reduce-scatters), then waits
    for its gather."""
    p = plan.sharded()
    link, buckets, nb = Link(p), p.buckets, len(plan.buckets)
    needed_by = {b.priority: b.index for b in buckets[:nb]}
    trigger = {b.layers[-1]: b.index for b in buckets[:nb]}
    order = sorted(range(nb), key=lambda b: buckets[b].priority)
    due, t, ends = deque(), 0.0, []

    def scattered(b, generation):
        return link.is_done(buckets[b].chunks, generation)

    def update_and_gather(b, generation, t):
        t += sum(p.update_s[layer] for layer in buckets[b].layers)
        link.post(buckets[nb + b].chunks, generation, t)
        return t

    def advance(generation, t):
        link.advance(t)
        while due and scattered(due[0], generation):
            t = update_and_gather(due.popleft(), generation, t)
        return t

    for it in range(iterations):
        for layer, cost in enumerate(p.forward_s):
            if it > 0:
                t = advance(it - 1, t)
                if layer in needed_by:
                    b = needed_by[layer]
                    while b in due:
                        head = due.popleft()
                        t = link.wait(lambda: scattered(head, it - 1), t)
                        t = update_and_gather(head, it - 1, t)
                    t = advance(it - 1, t)   # the gathers already possible queue up behind
                    t = link.wait(lambda: link.is_done(buckets[nb + b].chunks, it - 1), t)
            t += p.hook_s + cost
        for layer in reversed(range(len(p.backward_s))):
            t += p.backward_s[layer] + p.hook_s
            if layer in trigger:
                link.ready(buckets[trigger[layer]].chunks, it, t)
        due = deque(order)
        t = advance(it, t)
        ends.append(t)
    return ends


def steady_iteration(plan, strategy, iterations=None):
    """Seconds per iteration once the pipeline is full: the mean over the last half
    of ``iterations`` (default: enough for a delay K to settle)."""
    kind, argument = modelled_strategy(strategy)
    n = iterations or 4 * ((argument if kind == 'delayed' else 1) + 3)
    ends = iteration_ends(plan, strategy, n)
    half = n // 2
    return (ends[-1] - ends[half - 1]) / (n - half)
