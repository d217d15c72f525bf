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

The gathers are buckets of their own, ``buckets[B:]`` (B gradient buckets),
with the chunks and priorities of the gradient bucket they follow, so the
scheduler, the in-flight limit, the priority rounds, the progress engines
and the waits are the allreduce communicator's, unchanged. Collective as the
base: every rank posts the same buckets, gathers included, in the same order.
"""
import numpy as np
from mpi4py import MPI

from .buckets import Bucket, Chunk, make_buckets
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
    """``Communicator`` whose gradient buckets are reduce-scattered into
    ``shard_grad`` and whose gather buckets all-gather ``weights``.

    ``parts[c]``: (arena start, count, offset in ``shard_grad``) of this rank's
    part of gradient chunk c; ``shard_size``: the elements this rank owns.
    """

    def __init__(self, comm, grad, weights, segments, **settings):
        if settings.get('compress'):
            raise ValueError(f"--compress {settings['compress']}: sharded's reduce-scatter is "
                             'not compressed (compression applies to the gradient allreduce of '
                             'sync, layerwise, async-layerwise and delayed:K)')
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
        n, nb = len(chunks), len(buckets)
        gathers = [Chunk(n + c.index, nb + c.bucket, c.start, c.stop, c.priority) for c in chunks]
        gather_buckets = [Bucket(nb + b.index, b.layers, b.start, b.stop, b.priority,
                                 [n + c for c in b.chunks]) for b in buckets]
        self._gradient_buckets, self._gradient_chunks = nb, n
        return buckets + gather_buckets, chunks + gathers

    @property
    def gradient_buckets(self):
        return self.buckets[:self._gradient_buckets]

    def post_gather(self, bucket):
        """Bucket ``bucket``'s parts of the weights are updated here: all-gather them."""
        self.post(self._gradient_buckets + bucket, 1)

    def wait_gather(self, bucket):
        """Block until ``bucket``'s weights are whole here again."""
        self.wait(self._gradient_buckets + bucket)

    def _start(self, chunk, buffer, key):
        c = chunk.index % self._gradient_chunks
        counts, displs = self.counts[c], self.displs[c]
        if chunk.index < self._gradient_chunks:
            _, count, offset = self.parts[c]
            return self.data_comm.Ireduce_scatter(buffer[chunk.start:chunk.stop],
                                                  self.shard_grad[offset:offset + count],
                                                  counts, op=MPI.SUM)
        return self.data_comm.Iallgatherv(MPI.IN_PLACE,
                                          [buffer[chunk.start:chunk.stop], (counts, displs)])

    def _wire_bytes(self, chunk):
        """A reduce-scatter or an all-gather by the ring: (P-1)/P of the chunk."""
        return (self.size - 1) / self.size * (chunk.stop - chunk.start) * self.buffers[0].itemsize

    def _span_name(self, chunk):
        if chunk.index < self._gradient_chunks:
            return f'reduce-scatter b{chunk.bucket}.{chunk.index}'
        return f'all-gather b{chunk.bucket - self._gradient_buckets}.{chunk.index}'

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
            for c in range(self._gradient_chunks):
                for r in range(self.size):
                    a = self.chunks[c].start + int(self.displs[c][r])
                    b = int(starts[r] + offsets[c, r])
                    whole[a:a + int(counts[c, r])] = received[b:b + int(counts[c, r])]
            wholes.append(whole)
        return wholes
