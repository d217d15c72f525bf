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

import numpy as np
from mpi4py import MPI
from numba import njit

from . import parse_codec

__all__ = ['make_codec', 'Half', 'TopK']

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
    its request; ``finish(buffer, chunk, key)`` leaves the sum over ranks in
    the chunk's slice once the request completed (``key`` tells in-flight
    generations apart); ``sent_bytes(count)`` is what a rank sends for a chunk
    of ``count`` values (as the ring algorithms send); ``residual`` the
    error-feedback state (None: none).
    """
    residual = None

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

    def finish(self, buffer, chunk, key):
        values = buffer[chunk.start:chunk.stop]
        if self.name == 'fp16':
            unpack_fp16(values, np.float32(self.ranks), self.scratch)
        else:
            unpack_bf16(values)

    def sent_bytes(self, count):
        return 2 * (self.ranks - 1) / self.ranks * count * 2

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

    def finish(self, buffer, chunk, key):
        send, receive = self.in_flight.pop(key)
        values = buffer[chunk.start:chunk.stop]
        values[...] = 0
        k = send.shape[0]
        for r in range(self.ranks):   # rank order: every rank adds alike
            pairs = receive[r * k:(r + 1) * k]
            np.add.at(values, pairs[:, 0].astype(np.intp), pairs[:, 1].view(values.dtype))
        self.pool[chunk.stop - chunk.start].append((send, receive))

    def sent_bytes(self, count):
        return (self.ranks - 1) * 8 * self.count(count)

    def free(self):
        self.pool.clear()


def make_codec(spec, ranks, size=0, dtype=np.float32):
    """The codec ``spec`` (see ``CODECS``) for ``ranks`` ranks and a gradient
    buffer of ``size`` values, or None for None."""
    if spec is None:
        return None
    name, ratio = parse_codec(spec)
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"--compress {spec} packs float32 gradients; these are {np.dtype(dtype)}")
    return TopK(ratio, ranks, size, dtype) if name == 'topk' else Half(name, ranks)
