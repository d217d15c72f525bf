"""Gradient compression on the wire: 16-bit floats (``--compress fp16|bf16``)
and top-k sparsification with error feedback (``--compress topk:RATIO``).

A chunk of float32 gradients is packed *in place* into 16-bit values before
its allreduce — value i goes to bytes 2i..2i+1 of the chunk's own memory,
which a forward pass can overwrite safely, as value i's float32 bytes
(4i..4i+3) were read before — reduced with a sum over 16-bit floats (a
user-defined MPI operation: MPI has no 16-bit float type), and unpacked in
place, backwards, when it completes. No extra memory; half the bytes.

- ``fp16`` (IEEE half): 11 significant bits, largest value 65504. Each rank
  packs its gradient times 1/P, so that the sum — the mean — stays in range
  where the ranks' gradients are; unpacking multiplies by P again (the
  solver turns the sum into the mean as always). Values beyond 65504 / P
  become infinite, and the divergence check names the layer.
- ``bf16`` (bfloat16): float32's range with 8 significant bits; no scaling.

Both round to nearest even when packing and after each addition of the
reduction, so a sum of P values is rounded P - 1 times in 16 bits: this is
lossy (fp16: about 5e-4 relative per addition, bf16: 4e-3), unlike the
float32 allreduce. Every rank still gets the same bits (the additions are
commutative), so every strategy computes the iterates of ``sync`` under the
same compression.
"""
import math
import time

import numpy as np
from mpi4py import MPI
from numba import njit

from . import parse_codec
from .buckets import Chunk

__all__ = ['make_codec', 'measure_rate', 'Half', 'TopK', 'PowerSGD']

JIT = dict(nogil=True, cache=True)


@njit(**JIT)
def _bf16_bits(x):
    """The bfloat16 nearest to float32 ``x`` (ties to even), as its 16 bits."""
    bits = np.uint32(x.view(np.uint32)[0])
    if (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (bits & np.uint32(0xFFFF)):
        return np.uint16((bits >> np.uint32(16)) | np.uint32(0x40))   # NaN stays NaN
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return np.uint16((bits + rounding) >> np.uint32(16))


@njit(**JIT)
def pack_bf16(values):
    """In place: float32 ``values`` as bfloat16 in the first half of their memory;
    returns that half as uint16."""
    n = values.size
    wire = values.view(np.uint16)[:n]
    one = np.empty(1, np.float32)
    for i in range(n):
        one[0] = values[i]
        wire[i] = _bf16_bits(one)
    return wire


@njit(**JIT)
def unpack_bf16(values):
    """In place, the inverse of ``pack_bf16`` (backwards: value i's float32 bytes
    cover 16-bit values 2i and 2i+1, which were read before)."""
    n = values.size
    wire = values.view(np.uint16)
    bits = values.view(np.uint32)
    for i in range(n - 1, -1, -1):
        bits[i] = np.uint32(wire[i]) << np.uint32(16)


@njit(**JIT)
def add_bf16(incoming, into):
    """``into += incoming`` over bfloat16 bit patterns (uint16), rounded to nearest even."""
    one = np.empty(1, np.float32)
    a = one.view(np.uint32)
    for i in range(into.size):
        a[0] = np.uint32(into[i]) << np.uint32(16)
        x = one[0]
        a[0] = np.uint32(incoming[i]) << np.uint32(16)
        one[0] = x + one[0]
        into[i] = _bf16_bits(one)


BLOCK = 16384   # values converted at a time by the fp16 codec (NumPy's conversions)


def pack_fp16(values, scale, scratch):
    """In place: ``values * scale`` as IEEE half in the first half of their memory
    (NumPy converts; a block at a time through ``scratch``, so that every
    float32 a block overwrites was read before); returns that half."""
    n = values.size
    wire = values.view(np.float16)[:n]
    for i in range(0, n, BLOCK):
        block = values[i:i + BLOCK]
        part = scratch[:block.size]
        np.multiply(block, scale, out=part)
        with np.errstate(over='ignore'):   # beyond 65504: inf, which the divergence check reports
            wire[i:i + block.size] = part   # rounds to nearest even
    return wire


def unpack_fp16(values, scale, scratch):
    """In place, the inverse of ``pack_fp16``, times ``scale``: backwards, a block
    at a time, each block's 16-bit values read before its float32s are written."""
    n = values.size
    wire = values.view(np.float16)
    for i in range(((n - 1) // BLOCK) * BLOCK, -1, -BLOCK):
        part = scratch[:min(BLOCK, n - i)]
        part[...] = wire[i:i + part.size]
        np.multiply(part, scale, out=values[i:i + part.size])


def _sum_fp16(incoming, into, datatype):
    a = np.frombuffer(incoming, np.float16)
    b = np.frombuffer(into, np.float16)
    np.add(a, b, out=b)


def _sum_bf16(incoming, into, datatype):
    add_bf16(np.frombuffer(incoming, np.uint16), np.frombuffer(into, np.uint16))


class Half:
    """16-bit floats on the wire: ``fp16`` or ``bf16`` (see the module's text).

    The codec contract, which the communicator drives: ``start(comm, buffer,
    chunk, key)`` posts chunk ``chunk``'s reduction of ``buffer`` and returns
    its request; ``finish(comm, buffer, chunk, key)`` leaves the sum over ranks
    in the chunk's slice once the request completed (``key`` tells in-flight
    generations apart); a codec of two ``phases`` posts its second collective
    from the first ``finish`` on ``comm`` and returns its request, and its
    second ``finish`` completes the chunk; ``sent_bytes(chunk)``
    is what a rank sends for the chunk (as the ring algorithms send);
    ``residual`` the error-feedback state, each rank's own (None: none), and
    ``shared`` the state every rank holds alike (names -> arrays), both kept
    in snapshots; ``whole_buckets``: the codec needs buckets uncut.
    """
    residual = None
    shared = {}
    whole_buckets = False
    phases = 1

    def __init__(self, name, ranks):
        self.name, self.ranks = name, ranks
        self.scratch = np.empty(BLOCK, np.float32)
        self.op = MPI.Op.Create(_sum_fp16 if name == 'fp16' else _sum_bf16, commute=True)

    def start(self, comm, buffer, chunk, key):
        values = buffer[chunk.start:chunk.stop]
        if self.name == 'fp16':
            wire = pack_fp16(values, np.float32(1.0 / self.ranks), self.scratch)
        else:
            wire = pack_bf16(values)
        return comm.Iallreduce(MPI.IN_PLACE, [wire, MPI.UINT16_T], op=self.op)

    def finish(self, comm, buffer, chunk, key):
        values = buffer[chunk.start:chunk.stop]
        if self.name == 'fp16':
            unpack_fp16(values, np.float32(self.ranks), self.scratch)
        else:
            unpack_bf16(values)

    def sent_bytes(self, chunk):
        return 2 * (self.ranks - 1) / self.ranks * (chunk.stop - chunk.start) * 2

    def free(self):
        self.op.Free()


class TopK:
    """``topk:RATIO``: each rank sends the k = ceil(RATIO n) largest entries (by
    magnitude) of each chunk of n, as (index, value) pairs gathered by every
    rank (``Iallgather``), which adds them up in rank order — the same bits
    everywhere. Error feedback (Seide et al. 2014; Stich et al. 2018): what a
    rank did not send stays in its ``residual`` and is added to its next
    gradient there, so over the iterations every gradient is sent in full.
    Per rank and chunk it sends (P-1) 8k bytes where the ring allreduce sends
    2(P-1)/P 4n: a share of P RATIO. RATIO 1 sends everything (the dense sum,
    added in rank order).
    """

    shared = {}
    whole_buckets = False
    phases = 1

    def __init__(self, ratio, ranks, size, dtype):
        self.ratio, self.ranks = ratio, ranks
        self.residual = np.zeros(size, dtype)   # per rank: the part not sent yet
        self.pool = {}       # chunk length -> free (send, receive) buffer pairs
        self.in_flight = {}  # key -> the pair of that post

    def count(self, n):
        return min(n, max(1, math.ceil(self.ratio * n)))

    def _buffers(self, n):
        free = self.pool.setdefault(n, [])
        if free:
            return free.pop()
        k = self.count(n)
        return np.empty((k, 2), np.uint32), np.empty((self.ranks * k, 2), np.uint32)

    def start(self, comm, buffer, chunk, key):
        n = chunk.stop - chunk.start
        values, residual = buffer[chunk.start:chunk.stop], self.residual[chunk.start:chunk.stop]
        residual += values   # what this rank owes: the gradient and what it did not send before
        k = self.count(n)
        chosen = (np.arange(n) if k == n else
                  np.argpartition(np.abs(residual), n - k)[n - k:])
        chosen.sort()
        send, receive = self._buffers(n)
        send[:, 0] = chosen
        send[:, 1] = residual[chosen].view(np.uint32)
        residual[chosen] = 0
        self.in_flight[key] = (send, receive)
        return comm.Iallgather(send, receive)

    def finish(self, comm, buffer, chunk, key):
        send, receive = self.in_flight.pop(key)
        values = buffer[chunk.start:chunk.stop]
        values[...] = 0
        k = send.shape[0]
        for r in range(self.ranks):   # rank order: every rank adds alike
            pairs = receive[r * k:(r + 1) * k]
            np.add.at(values, pairs[:, 0].astype(np.intp), pairs[:, 1].view(values.dtype))
        self.pool[chunk.stop - chunk.start].append((send, receive))

    def sent_bytes(self, chunk):
        return (self.ranks - 1) * 8 * self.count(chunk.stop - chunk.start)

    def free(self):
        self.pool.clear()


class PowerSGD:
    """``powersgd:RANK`` (Vogels, Karimireddy and Jaggi 2019): each parameter
    matrix M (a blob of two or more axes, as rows x the rest; with both sides
    larger than RANK) is sent as two thin factors. With error feedback, M =
    gradient + residual; P = M Q (Q: a (cols, RANK) matrix kept from the last
    iteration, started from one seeded normal draw on every rank); allreduce
    P; P := an orthonormal basis of it (QR); Q = M^T P; allreduce Q; the sum
    over ranks is approximated by P Q^T, and each rank keeps M - P Q^T / P as
    its residual (PyTorch's PowerSGD hook does the same). Vectors and small
    matrices go dense, in the first allreduce. Every rank computes the same
    bits. A chunk here is a whole bucket (``whole_buckets``). Per matrix it
    sends (rows + cols) RANK values instead of rows x cols.
    """
    whole_buckets = True
    phases = 2   # finish() of the first step posts the second and returns its request

    def __init__(self, rank, ranks, size, dtype, blobs, seed=0):
        self.rank, self.ranks = rank, ranks
        self.residual = np.zeros(size, dtype)
        self.blobs = sorted(blobs, key=lambda b: b[0].start)   # (arena slice, shape)
        self.shared = {}    # 'powersgd/Q@START' -> the (cols, RANK) factor of the blob at START
        rng = np.random.default_rng(seed)
        for view, shape in self.blobs:
            rows, cols = self._matrix(shape)
            if self._compressed(rows, cols):
                self.shared[f'powersgd/Q@{view.start}'] = rng.standard_normal(
                    (cols, rank)).astype(dtype)
        self.in_flight = {}

    @staticmethod
    def _matrix(shape):
        rows = shape[0] if shape else 1
        return rows, int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1

    def _compressed(self, rows, cols):
        return rows > self.rank and cols > self.rank

    def _parts(self, chunk):
        """(matrices: (view, rows, cols), dense views) of the blobs in ``chunk``."""
        matrices, dense = [], []
        for view, shape in self.blobs:
            if view.start >= chunk.start and view.stop <= chunk.stop:
                rows, cols = self._matrix(shape)
                (matrices.append((view, rows, cols)) if self._compressed(rows, cols)
                 else dense.append(view))
        return matrices, dense

    def start(self, comm, buffer, chunk, key):
        matrices, dense = self._parts(chunk)
        sizes = [rows * self.rank for _, rows, _ in matrices] + [v.stop - v.start for v in dense]
        send = np.empty(sum(sizes), buffer.dtype)
        offset = 0
        for view, rows, cols in matrices:
            m = self.residual[view]
            m += buffer[view]                       # what this rank owes
            p = send[offset:offset + rows * self.rank].reshape(rows, self.rank)
            np.matmul(m.reshape(rows, cols), self.shared[f'powersgd/Q@{view.start}'], out=p)
            offset += rows * self.rank
        for view in dense:
            send[offset:offset + view.stop - view.start] = buffer[view]
            offset += view.stop - view.start
        self.in_flight[key] = ['P', matrices, dense, send, None]
        return comm.Iallreduce(MPI.IN_PLACE, send, op=MPI.SUM)

    def finish(self, comm, buffer, chunk, key):
        state = self.in_flight[key]
        phase, matrices, dense, summed, _ = state
        if phase == 'P':
            offset, bases = 0, []
            for view, rows, cols in matrices:
                p = summed[offset:offset + rows * self.rank].reshape(rows, self.rank)
                bases.append(np.linalg.qr(p)[0].astype(buffer.dtype))
                offset += rows * self.rank
            for view in dense:   # the dense sums are final
                buffer[view] = summed[offset:offset + view.stop - view.start]
                offset += view.stop - view.start
            q_send = np.empty(sum(cols * self.rank for _, _, cols in matrices), buffer.dtype)
            offset = 0
            for (view, rows, cols), basis in zip(matrices, bases):
                q = q_send[offset:offset + cols * self.rank].reshape(cols, self.rank)
                np.matmul(self.residual[view].reshape(rows, cols).T, basis, out=q)
                offset += cols * self.rank
            state[0], state[3], state[4] = 'Q', q_send, bases
            return comm.Iallreduce(MPI.IN_PLACE, q_send, op=MPI.SUM)
        offset = 0
        for (view, rows, cols), basis in zip(matrices, state[4]):
            q = summed[offset:offset + cols * self.rank].reshape(cols, self.rank)
            approx = buffer[view].reshape(rows, cols)
            np.matmul(basis, q.T, out=approx)                 # the sum over ranks
            m = self.residual[view].reshape(rows, cols)
            m -= approx / self.ranks                           # what this rank did not send
            self.shared[f'powersgd/Q@{view.start}'][...] = q / self.ranks   # warm start
            offset += cols * self.rank
        del self.in_flight[key]
        return None

    def sent_bytes(self, chunk):
        matrices, dense = self._parts(chunk)
        values = (sum((rows + cols) * self.rank for _, rows, cols in matrices)
                  + sum(v.stop - v.start for v in dense))
        return 2 * (self.ranks - 1) / self.ranks * values * 4

    def free(self):
        self.in_flight.clear()


def make_codec(spec, ranks, size=0, dtype=np.float32, blobs=()):
    """The codec ``spec`` (see ``CODECS``) for ``ranks`` ranks, a gradient buffer
    of ``size`` values and its parameter ``blobs`` ((arena slice, shape), for
    PowerSGD), or None for None."""
    if spec is None:
        return None
    name, argument = parse_codec(spec)
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"--compress {spec} packs float32 gradients; these are {np.dtype(dtype)}")
    if name == 'topk':
        return TopK(argument, ranks, size, dtype)
    if name == 'powersgd':
        if not blobs:
            raise ValueError(f'--compress {spec} needs the parameter blobs\' shapes')
        return PowerSGD(argument, ranks, size, dtype, blobs)
    return Half(name, ranks)


def measure_rate(spec, nbytes=4 << 20, repeats=5):
    """Float32 gradient bytes per second that codec ``spec`` (``--compress``)
    encodes and decodes on this machine, one rank's work for one chunk of
    ``nbytes``: fp16/bf16 pack, one pass of their 16-bit reduction and
    unpack; topk choose and scatter back; PowerSGD both products, the QR and
    the approximation, on a square matrix of ``nbytes``. The collectives run on
    ``MPI.COMM_SELF`` (one rank: no transfer). Best of ``repeats``."""
    name, _ = parse_codec(spec)
    side = int(np.sqrt(nbytes // 4))
    count = side * side
    rng = np.random.default_rng(0)
    gradient = rng.standard_normal(count).astype(np.float32)
    buffer = np.empty_like(gradient)
    blobs = [(slice(0, count), (side, side))]
    codec = make_codec(spec, 1, count, np.float32, blobs)
    chunk = Chunk(0, 0, 0, count, (0, 0))
    best = float('inf')
    try:
        for attempt in range(repeats + 1):   # the first one compiles or loads the kernels
            buffer[...] = gradient
            start = time.perf_counter()
            request = codec.start(MPI.COMM_SELF, buffer, chunk, attempt)
            for _ in range(codec.phases):
                request.Wait()
                if name in ('fp16', 'bf16'):
                    wire = buffer.view(np.uint16)[:count]
                    codec.op.Reduce_local([wire.copy(), MPI.UINT16_T], [wire, MPI.UINT16_T])
                request = codec.finish(MPI.COMM_SELF, buffer, chunk, attempt)
            if attempt:
                best = min(best, time.perf_counter() - start)
    finally:
        codec.free()
    return 4 * count / best
