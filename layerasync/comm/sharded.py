"""The sharded communicator: reduce-scatter the gradient, all-gather the weights.

Each chunk of the gradient arena (the buckets and chunks of ``buckets``) is
cut into P contiguous *parts*, part r owned by rank r. Posting a gradient
bucket reduce-scatters its chunks — ``Ireduce_scatter`` from the gradient
arena into this rank's compact ``shard_grad`` (the sum over ranks of its
parts) — and posting the bucket's *gather* (``post_gather``) all-gathers the
chunks of the weights in place (``Iallgatherv``), each rank contributing its
updated parts. A reduce-scatter and an all-gather move the bytes of one
allreduce (ring algorithms: 2(P-1)/P times the data per rank); between them
each rank updates only its parts, so the solver's state for the rest never
exists here.

The reduce-scatters go through the allreduce communicator's scheduler, in-flight
limit and priority rounds, unchanged. The gathers do not: the caller posts
them in one order on every rank (the strategy updates its shards in forward
order), so they need no negotiation, and each is posted at once on a
communicator of its own. A gather is wanted by the very next forward; queued
behind the in-flight limit and a round of its own it waited for a slot behind
the large chunks of the last layers (measured: about 30 ms of conv1's
50 ms chain on alexnet-mini at 150 Mbit/s). The progress engines and waits
advance both kinds of request alike.
"""
import time

import numpy as np
from mpi4py import MPI

from .buckets import make_buckets
from .job import wait_all
from .mpi import Communicator

__all__ = ['ShardedCommunicator', 'cut_evenly']


def cut_evenly(count, parts):
    """(counts, displacements) of ``count`` elements cut into ``parts``
    contiguous parts as equal as can be (the first ones one larger)."""
    counts = np.full(parts, count // parts, np.int64)
    counts[:count % parts] += 1
    return counts, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


class ShardedCommunicator(Communicator):
    """``Communicator`` whose buckets are reduce-scattered into ``shard_grad``
    and whose gathers (``post_gather``) all-gather ``weights``.

    Collective as the base, and: every rank posts the gathers of the same
    buckets in the same order, each after that bucket's reduce-scatter.
    ``parts[c]``: (arena start, count, offset in ``shard_grad``) of this rank's
    part of gradient chunk c; ``shard_size``: the elements this rank owns.
    """

    def __init__(self, comm, grad, weights, segments, **settings):
        if settings.get('compress'):
            raise ValueError(f"--compress {settings['compress']}: sharded's reduce-scatter is "
                             'not compressed (compression applies to the gradient allreduce of '
                             'sync, layerwise, async-layerwise and delayed:K)')
        # Set before the base starts a progress thread, which tests them.
        self.gather_comm = comm.Dup()
        self.gather_requests, self.gather_keys = [], []   # keys: (chunk, posted at)
        self.gathering = {}   # bucket -> its chunks' gathers not complete here
        super().__init__(comm, [grad, weights], segments, **settings)

    def _cut(self, segments, fusion_bytes, chunk_bytes, itemsize):
        buckets, chunks = make_buckets(segments, fusion_bytes, chunk_bytes, itemsize)
        self.counts, self.displs, self.parts = [], [], []
        offset = 0
        for chunk in chunks:
            counts, displs = cut_evenly(chunk.stop - chunk.start, self.size)
            self.counts.append(counts)
            self.displs.append(displs)
            mine = int(counts[self.rank])
            self.parts.append((chunk.start + int(displs[self.rank]), mine, offset))
            offset += mine
        self.shard_size = offset
        self.shard_grad = np.zeros(offset, self.buffers[0].dtype if self.buffers else np.float32)
        return buckets, chunks

    def post_gather(self, bucket):
        """Bucket ``bucket``'s parts of the weights are updated here: all-gather them."""
        if not 0 <= bucket < len(self.buckets):
            raise ValueError(f'rank {self.rank}: no bucket {bucket}; this communicator has '
                             f'buckets 0..{len(self.buckets) - 1}')
        weights, now = self.buffers[1], time.perf_counter()
        with self.lock:
            if self.gathering.get(bucket):
                raise RuntimeError(f'rank {self.rank}: bucket {bucket} gathered again before '
                                   'its last gather completed')
            for c in self.buckets[bucket].chunks:
                chunk = self.chunks[c]
                self.gather_requests.append(self.gather_comm.Iallgatherv(
                    MPI.IN_PLACE, [weights[chunk.start:chunk.stop], (self.counts[c], self.displs[c])]))
                self.gather_keys.append((c, now))
                self.sent_bytes += self._wire_bytes(chunk)
            self.gathering[bucket] = len(self.buckets[bucket].chunks)
            if self.thread is None:
                self._test()
            else:
                self.lock.notify_all()

    def wait_gather(self, bucket):
        """Block until ``bucket``'s weights are whole here again."""
        if bucket not in self.gathering:
            raise RuntimeError(f'rank {self.rank}: wait for the gather of bucket {bucket}, '
                               'which was never posted')
        self._block_until(lambda: not self.gathering[bucket], f'the gather of bucket {bucket}')

    def _test(self):
        moved = super()._test()
        done = MPI.Request.Testsome(self.gather_requests) if self.gather_requests else None
        if done:
            now = time.perf_counter()
            for i in sorted(done, reverse=True):
                self.gather_requests.pop(i)
                c, posted = self.gather_keys.pop(i)
                chunk = self.chunks[c]
                self.gathering[chunk.bucket] -= 1
                if self.trace is not None:
                    self.trace.span('comm', f'all-gather b{chunk.bucket}.{c}', posted, now,
                                    bytes=(chunk.stop - chunk.start) * self.buffers[1].itemsize,
                                    sent=self._wire_bytes(chunk))
        return moved or bool(done)

    def _idle(self):
        return super()._idle() and not self.gather_requests

    def _in_flight(self):
        return super()._in_flight() or bool(self.gather_requests)

    def close(self):
        super().close()   # drains the gathers too (``_idle``)
        self.gather_comm.Free()

    def _start(self, chunk, buffer, key):
        _, count, offset = self.parts[chunk.index]
        return self.data_comm.Ireduce_scatter(buffer[chunk.start:chunk.stop],
                                              self.shard_grad[offset:offset + count],
                                              self.counts[chunk.index], op=MPI.SUM)

    def _wire_bytes(self, chunk):
        """A reduce-scatter or an all-gather by the ring: (P-1)/P of the chunk."""
        return (self.size - 1) / self.size * (chunk.stop - chunk.start) * self.buffers[0].itemsize

    def _span_name(self, chunk):
        return f'reduce-scatter b{chunk.bucket}.{chunk.index}'

    def gather_shards(self, arrays, root=0):
        """Collective: whole arena-shaped copies of ``arrays`` (each rank's compact
        arrays of ``shard_size``, e.g. its solver histories) at rank ``root``
        (None elsewhere), or at every rank for ``root=None``. Whatever lies
        outside every chunk is zero."""
        counts = np.array(self.counts, np.int64).reshape(-1, self.size)   # (chunks, ranks)
        offsets = np.cumsum(counts, axis=0) - counts    # each part in its owner's compact array
        sizes = counts.sum(axis=0)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        comm, mine = self.control.comm, root is None or self.rank == root
        wholes = []
        for array in arrays:
            received = np.empty(int(sizes.sum()), array.dtype) if mine else None
            into = [received, (sizes, starts)] if mine else None
            request = (comm.Iallgatherv(array, into) if root is None else
                       comm.Igatherv(array, into, root=root))
            wait_all([request], 'the gather of the solver state')
            if not mine:
                wholes.append(None)
                continue
            whole = np.zeros_like(self.buffers[1])
            for c in range(len(self.chunks)):
                for r in range(self.size):
                    a = self.chunks[c].start + int(self.displs[c][r])
                    b = int(starts[r] + offsets[c, r])
                    whole[a:a + int(counts[c, r])] = received[b:b + int(counts[c, r])]
            wholes.append(whole)
        return wholes
