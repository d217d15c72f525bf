"""Gradient compression on the wire: 16-bit floats (``--compress fp16|bf16``).

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
import numpy as np
from mpi4py import MPI
from numba import njit

__all__ = ['CODECS', 'make_codec', 'Half']

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
    """16-bit floats on the wire: ``fp16`` or ``bf16`` (see the module's text)."""

    def __init__(self, name, ranks):
        self.name, self.ranks = name, ranks
        self.wire_ratio = 0.5   # bytes on the wire per float32 byte
        self.scratch = np.empty(BLOCK, np.float32)
        self.op = MPI.Op.Create(_sum_fp16 if name == 'fp16' else _sum_bf16, commute=True)

    def encode(self, values):
        """Pack float32 ``values`` (a contiguous slice) in place; the MPI buffer to reduce."""
        if self.name == 'fp16':
            wire = pack_fp16(values, np.float32(1.0 / self.ranks), self.scratch)
        else:
            wire = pack_bf16(values)
        return [wire, MPI.UINT16_T]

    def decode(self, values):
        """Unpack the reduced 16-bit sum in ``values``' memory back to float32, in place."""
        if self.name == 'fp16':
            unpack_fp16(values, np.float32(self.ranks), self.scratch)
        else:
            unpack_bf16(values)

    def free(self):
        self.op.Free()


CODECS = ('fp16', 'bf16')


def make_codec(name, ranks):
    """The codec ``name`` (one of ``CODECS``) for ``ranks`` ranks, or None for None."""
    if name is None:
        return None
    if name not in CODECS:
        raise ValueError(f"unknown compression '{name}'; known: {', '.join(CODECS)}")
    return Half(name, ranks)
