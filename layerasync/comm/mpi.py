"""The MPI communicator: in-place non-blocking allreduce of arena slices.

Data path: every chunk is ``Iallreduce(IN_PLACE, buffer[start:stop], SUM)``
on a contiguous slice of a gradient buffer — no packing, no pickling. The
sum is turned into a mean by the solver, which folds the strategy's
``scale=1/P`` into its update kernel: no extra pass. Each post names the buffer holding that generation of the
bucket (several buffers let ``delayed:K`` keep K gradient sets in flight).

Progress engines (MPI only moves a non-blocking collective forward while
some MPI call runs):

- ``poll``: the strategy calls ``progress()`` between layers;
- ``thread``: a progress thread tests requests every ``poll_interval``
  seconds (needs MPI_THREAD_MULTIPLE) while the Numba kernels and BLAS run
  without the GIL;
- ``mpi``: the MPI library's own progress thread (MPICH:
  ``MPIR_CVAR_ASYNC_PROGRESS=1``, set by ``init_mpi`` before MPI starts),
  plus the ``poll`` calls.

Waiting: the ``thread`` engine's waiter sleeps on a condition that the
progress thread signals. The others poll and, when a poll found nothing,
pause with ``Backoff`` (spin ``spin`` seconds, then sleep up to
``max_sleep``) rather than call ``MPI_Waitany``, inside which MPICH
busy-polls: a rank that waits must leave the core to the peer it waits for
when ranks outnumber cores (``docs/cluster.md``, "Waiting without spinning").

Compression (``compress``: a codec of ``comm.compress`` — ``fp16``, ``bf16``,
``topk:RATIO``, ``powersgd:RANK``) replaces a chunk's allreduce by the
codec's collective(s) and leaves the sum over ranks in the chunk when they
complete; the trace's chunk spans then say what was sent (``sent``).

Three duplicated communicators keep the traffic apart, so their collectives
never have to be ordered against each other: data (chunks), rounds
(priority negotiation) and control (``self.control``, a ``Control``:
broadcasts, checks, metrics).
"""
import threading
import time
from collections import deque

import numpy as np
from mpi4py import MPI

from . import DEFAULTS, choose_priority, in_flight_for
from . import stall
from .job import wait_all
from .backoff import Backoff, default_spin
from .buckets import make_buckets
from .compress import make_codec
from .control import Control
from .scheduler import Scheduler

__all__ = ['Communicator']

ENGINES = ('poll', 'thread', 'mpi')


class Communicator:
    """Reduces buckets of gradient buffers across the ranks of ``comm``.

    Collective: every rank constructs it with the same buckets and settings,
    posts the same buckets in the same order and calls ``close()``.
    ``control`` (a ``Control``) runs the control-path collectives on a
    communicator of its own; call them only after ``wait_all()``.
    """

    def __init__(self, comm, buffers, segments, fusion_bytes=DEFAULTS['fusion_bytes'],
                 chunk_bytes=DEFAULTS['chunk_bytes'], max_in_flight=DEFAULTS['max_in_flight'],
                 priority=DEFAULTS['priority'], progress=DEFAULTS['progress'],
                 spin=DEFAULTS['spin'], max_sleep=DEFAULTS['max_sleep'],
                 compress=DEFAULTS['compress'], blobs=(), poll_interval=50e-6, trace=None,
                 warn=print):
        if progress not in ENGINES:
            raise ValueError(f"unknown progress engine '{progress}'; known: {', '.join(ENGINES)}")
        self.backoff = Backoff(default_spin() if spin is None else spin, max_sleep)
        self.codec = make_codec(compress, comm.Get_size(), buffers[0].size if buffers else 0,
                                buffers[0].dtype if buffers else np.float32, blobs)   # names a bad spec
        if self.codec is not None and self.codec.whole_buckets:
            chunk_bytes = 0   # PowerSGD compresses whole matrices
        self.control = Control(comm.Dup())
        self.rank, self.size = self.control.rank, self.control.size
        self.buffers = list(buffers)
        itemsize = self.buffers[0].itemsize if self.buffers else 4
        self.buckets, self.chunks = self._cut(segments, fusion_bytes, chunk_bytes, itemsize)
        self.data_comm, self.round_comm = comm.Dup(), comm.Dup()
        # The second steps of a two-step codec (PowerSGD), on a communicator of their own.
        self.chain_comm = comm.Dup() if self.codec is not None and self.codec.phases == 2 else None
        self.wire_estimate = None   # seconds, when 'auto' measured it
        if priority == 'auto':
            self.wire_estimate = self._estimate_wire_time(itemsize)
        priority = choose_priority(priority, self.wire_estimate)
        max_in_flight = in_flight_for(max_in_flight, priority)
        self.scheduler = Scheduler(self.chunks, max_in_flight, priority)
        self._settings = dict(fusion_bytes=fusion_bytes, chunk_bytes=chunk_bytes,
                              max_in_flight=max_in_flight, priority=priority, progress=progress,
                              compress=compress)
        self.trace = trace
        self.requests, self.keys, self.posted_at, self.posted_on = [], [], {}, {}
        # Two-step codecs: chunks in first-post order, those whose first step is
        # done, and those in their second step.
        self.chain, self.first_done, self.second = deque(), set(), set()
        # Bytes this rank has sent, as the ring algorithms send them (MPI may
        # choose others; the link counters of the emulated cluster measure).
        self.sent_bytes = 0.0
        self.round_req = self.round_send = self.round_recv = None
        self.generation = np.zeros(len(self.buckets), np.int64)  # posts per bucket here
        self.buffer_of = {}   # (bucket, generation) -> [buffer index, chunks not yet posted]
        self.lock = threading.Condition()
        self.thread = None
        if progress == 'thread':
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                warn(f'rank {self.rank}: the MPI library gives no MPI_THREAD_MULTIPLE; '
                     "progress engine 'thread' falls back to 'poll'")
                self._settings['progress'] = 'poll'
            else:
                self.poll_interval = poll_interval
                self.running = True
                self.thread = threading.Thread(target=self._progress_loop, daemon=True,
                                               name='layerasync-progress')
                self.thread.start()

    def _estimate_wire_time(self, itemsize, probe_bytes=1 << 20, repeats=3):
        """Collective: the seconds an allreduce of all the gradients would take,
        extrapolated by size from allreduces of (at most) ``probe_bytes`` after a
        warm-up (the median of ``repeats``); the mean over ranks, so every rank
        decides alike."""
        mine = [self.chunks[c] for b in self.gradient_buckets for c in b.chunks]
        total = sum(c.stop - c.start for c in mine)
        scratch = np.zeros(max(1, min(total, probe_bytes // itemsize)), np.float32)
        times = []
        for k in range(repeats + 1):
            start = time.perf_counter()
            wait_all([self.data_comm.Iallreduce(MPI.IN_PLACE, scratch, op=MPI.SUM)],
                     'the probe of the link')
            if k:
                times.append(time.perf_counter() - start)
        per_item = sorted(times)[len(times) // 2] / scratch.size
        ratio = 1.0
        if self.codec is not None and self.size > 1 and total:
            ratio = (sum(self.codec.sent_bytes(c) for c in mine)
                     / (2 * (self.size - 1) / self.size * total * itemsize))
        return self.control.allreduce_mean(per_item * total * ratio)

    @property
    def settings(self):
        """The settings in force that every rank must share, as keyword arguments
        of the constructor (a new dict): what was asked for, except ``progress``,
        which records the fallback from ``thread`` to ``poll`` without
        MPI_THREAD_MULTIPLE, ``priority``, which is the scheduler 'auto'
        chose (True or False; ``wire_estimate`` holds what it measured), and
        ``max_in_flight``, the scheduler's default when None was given. The
        back-off (``self.backoff``) is each rank's own and may differ between
        nodes."""
        return dict(self._settings)

    def _cut(self, segments, fusion_bytes, chunk_bytes, itemsize):
        """(buckets, chunks) of the communicator (a subclass adds its own)."""
        return make_buckets(segments, fusion_bytes, chunk_bytes, itemsize)

    @property
    def gradient_buckets(self):
        """The buckets of the gradient, ``buckets[:len(gradient_buckets)]``, which
        strategies post from backward (here: all of them)."""
        return self.buckets

    # -- the contract ----------------------------------------------------------
    def post(self, bucket, buffer=0):
        """Bucket ``bucket``'s gradient in ``buffers[buffer]`` is complete: reduce it.

        Each post of a bucket is its next generation (0, 1, ...).
        """
        with self.lock:
            self.buffer_of[bucket, int(self.generation[bucket])] = [
                buffer, len(self.buckets[bucket].chunks)]
            self.generation[bucket] += 1
            self.scheduler.mark_ready(self.buckets[bucket].chunks)
            if self.thread is None:
                self._step()
            else:
                self.lock.notify_all()

    def progress(self):
        """Advance in-flight work; cheap, called between layers (poll engines)."""
        if self.thread is None:
            if self.trace is not None:
                self.trace.instant(time.perf_counter())
            self._step()
        stall.answer()

    def wait(self, bucket, generation=None):
        """Block until ``bucket``'s reduction (default: its latest generation) is done here."""
        if not 0 <= bucket < len(self.buckets):
            raise ValueError(f'rank {self.rank}: no bucket {bucket}; this communicator has '
                             f'buckets 0..{len(self.buckets) - 1}')
        if generation is None:
            generation = int(self.generation[bucket]) - 1
        if generation < 0:
            raise RuntimeError(f'rank {self.rank}: wait for bucket {bucket}, which was never posted')
        chunk_ids = self.buckets[bucket].chunks
        self._block_until(lambda: self.scheduler.is_done(chunk_ids, generation), f'bucket {bucket}')

    def wait_any(self, buckets):
        """Block until one of ``buckets`` (latest generations) is done; returns it."""
        pending = list(buckets)

        def done():
            return any(self._latest_done(b) for b in pending)
        self._block_until(done, 'any bucket')
        return next(b for b in pending if self._latest_done(b))

    def wait_all(self):
        """Block until everything posted here is reduced and no round is outstanding."""
        self._block_until(self._idle, 'all buckets')

    def _idle(self):
        """Nothing posted here is unfinished, nothing ready is unposted, no round is due."""
        return (self.scheduler.idle() and self.round_req is None
                and not (self.scheduler.priority and self.scheduler.wants_round()))

    def _in_flight(self):
        """Is some request of this rank outstanding?"""
        return bool(self.requests) or self.round_req is not None

    def is_done(self, bucket):
        """Is ``bucket``'s latest posted generation done here (no waiting)?"""
        return self._latest_done(bucket)

    def _latest_done(self, b):
        return self.scheduler.is_done(self.buckets[b].chunks, int(self.generation[b]) - 1)

    def close(self):
        """Collective: drain, stop the progress thread, free the communicators."""
        self.wait_all()
        if self.thread is not None:
            with self.lock:
                self.running = False
                self.lock.notify_all()
            self.thread.join()
        for c in (self.data_comm, self.round_comm, self.chain_comm, self.control.comm):
            if c is not None:
                c.Free()
        if self.codec is not None:
            self.codec.free()

    # -- engine ----------------------------------------------------------------
    def _block_until(self, condition, what):
        self.backoff.reset()
        started = time.perf_counter()
        with self.lock:
            while not condition():
                if self.thread is not None:
                    if not self.thread.is_alive():
                        raise RuntimeError(f'rank {self.rank}: the progress thread died')
                    self.lock.wait(0.1)
                    stall.check(started, what)
                elif self._step():
                    self.backoff.reset()
                elif not self._in_flight():
                    raise RuntimeError(f'rank {self.rank}: waiting for {what}, but nothing is in '
                                       'flight or ready to post (a bucket was not posted)')
                else:
                    stall.check(started, what)
                    self.backoff.pause()
        stall.done()

    def _step(self):
        """One round of progress; returns whether anything changed. Holds the lock."""
        moved = self._test()
        if self.scheduler.priority:
            if self.round_req is not None and self.round_req.Test():
                self.round_req = None
                self._post(self.scheduler.on_round(self.round_recv))
                moved = True
            if self.round_req is None and self.scheduler.wants_round():
                self.round_send = self.scheduler.round_vector()
                self.round_recv = np.empty_like(self.round_send)
                self.round_req = self.round_comm.Iallreduce(self.round_send, self.round_recv,
                                                            op=MPI.MIN)
                moved = True
        else:
            posts = self.scheduler.next_posts()
            self._post(posts)
            moved = moved or bool(posts)
        if moved and self.thread is not None:
            self.lock.notify_all()
        return moved

    def _test(self):
        """Complete what finished of the posted requests; did any?"""
        done = MPI.Request.Testsome(self.requests) if self.requests else None
        if done:
            self._complete(done)
        return bool(done)

    def _complete(self, indices):
        now = time.perf_counter()
        for i in sorted(indices, reverse=True):
            c, g = self.keys.pop(i)
            self.requests.pop(i)
            if self.codec is not None and self.codec.phases == 2 and (c, g) not in self.second:
                self.first_done.add((c, g))   # its second step waits for its turn (below)
                continue
            self.second.discard((c, g))
            buffer = self.posted_on.pop((c, g))
            if self.codec is not None:
                self.codec.finish(self.chain_comm, self.buffers[buffer], self.chunks[c], (c, g))
            self.scheduler.completed(c)
            self._record(c, g, now)
        # A two-step codec (PowerSGD) posts each chunk's second collective on a
        # communicator of its own, in the order the first ones were posted — the
        # same on every rank, whenever each rank saw them complete.
        while self.chain and self.chain[0] in self.first_done:
            key = self.chain.popleft()
            self.first_done.discard(key)
            self.requests.append(self.codec.finish(self.chain_comm, self.buffers[self.posted_on[key]],
                                                   self.chunks[key[0]], key))
            self.keys.append(key)
            self.second.add(key)

    def _post(self, posts):
        now = time.perf_counter()
        for c, g in posts:
            chunk = self.chunks[c]
            entry = self.buffer_of[chunk.bucket, g]
            entry[1] -= 1
            if not entry[1]:   # the bucket's last chunk of this generation
                del self.buffer_of[chunk.bucket, g]
            self.requests.append(self._start(chunk, self.buffers[entry[0]], (c, g)))
            self.keys.append((c, g))
            self.posted_at[c, g] = now
            self.posted_on[c, g] = entry[0]
            if self.codec is not None and self.codec.phases == 2:
                self.chain.append((c, g))
            self.sent_bytes += self._wire_bytes(chunk)

    def _start(self, chunk, buffer, key):
        """Post ``chunk``'s collective on ``buffer``; its request. A codec posts
        its own (``compress``) and finishes it when it completes; ``key`` is
        the chunk's (index, generation)."""
        if self.codec is not None:
            return self.codec.start(self.data_comm, buffer, chunk, key)
        return self.data_comm.Iallreduce(MPI.IN_PLACE, buffer[chunk.start:chunk.stop], op=MPI.SUM)

    def _wire_bytes(self, chunk):
        """What this rank sends for ``chunk``'s collective with the bandwidth-optimal
        (ring) algorithm: 2(P-1)/P of an allreduce's bytes."""
        if self.codec is not None:
            return self.codec.sent_bytes(chunk)
        return 2 * (self.size - 1) / self.size * (chunk.stop - chunk.start) * self.buffers[0].itemsize

    def _span_name(self, chunk):
        return f'allreduce b{chunk.bucket}.{chunk.index}'

    def _record(self, c, g, now):
        start = self.posted_at.pop((c, g))
        if self.trace is not None:
            chunk = self.chunks[c]
            self.trace.span('comm', self._span_name(chunk), start, now,
                            bytes=(chunk.stop - chunk.start) * self.buffers[0].itemsize,
                            sent=self._wire_bytes(chunk), generation=g)

    def _progress_loop(self):
        # Polls every poll_interval at first, then less often while nothing moves
        # (up to max_sleep): a thread that polls at a fixed rate holds a core.
        backoff = Backoff(0.0, max(self.backoff.max_sleep, self.poll_interval), self.poll_interval)
        with self.lock:
            while self.running:
                moved = self._step()
                if self._in_flight():
                    if moved:
                        backoff.reset()
                    else:
                        # Sleep without the lock: the main thread may post meanwhile.
                        self.lock.wait(backoff.next_sleep())
                else:
                    backoff.reset()
                    self.lock.wait()
