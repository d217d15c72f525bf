"""GEMM that accumulates: ``out = a @ b + beta * out``, through NumPy's BLAS only.

NumPy's ``matmul`` cannot accumulate, and ``out += a @ b`` makes a temporary
as large as ``out`` and a pass over it that leaves the cache: for a large
InnerProduct weight at small batch that pass costs as much as the product.
So the product runs in blocks of rows into a small workspace that stays in
cache (one per thread and dtype, kept between calls), each added to ``out``
right after: ``out`` is read and written once, as BLAS with beta = 1 would
do.

(SciPy's BLAS ``gemm`` takes beta, but SciPy loads a second OpenBLAS with its
own thread pool: with more than one thread, the two pools' spinning workers
compete for the cores, and LeNet ran 2.7x slower on 2 threads than on 1:
docs/performance.md, "Two threads".)
"""
import threading

import numpy as np

BLOCK_BYTES = 256 << 10   # one block of the product, in L2

_workspaces = threading.local()   # per thread: dtype -> flat block buffer, reused


def _workspace(count, dtype):
    """A reusable flat buffer of at least ``count`` values (this thread's)."""
    buffers = getattr(_workspaces, 'buffers', None)
    if buffers is None:
        buffers = _workspaces.buffers = {}
    buf = buffers.get(dtype)
    if buf is None or buf.size < count:
        buf = buffers[dtype] = np.empty(max(count, BLOCK_BYTES // dtype.itemsize), dtype)
    return buf


def gemm(a, b, out, beta=0.0):
    """``out[...] = a @ b + beta * out`` for 2-d arrays."""
    if beta == 0.0:
        np.matmul(a, b, out=out)
        return out
    rows, cols = out.shape
    if rows == 0 or cols == 0:
        return out
    if beta != 1.0:
        out *= beta
    step = max(1, min(rows, BLOCK_BYTES // (cols * out.itemsize)))
    block = _workspace(step * cols, out.dtype)[:step * cols].reshape(step, cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        part = block[:r1 - r0]
        np.matmul(a[r0:r1], b, out=part)
        out[r0:r1] += part
    return out
