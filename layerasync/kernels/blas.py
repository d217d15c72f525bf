"""GEMM that accumulates in place: ``out = alpha * a @ b + beta * out``.

NumPy's ``matmul`` cannot accumulate, and ``out += a @ b`` costs a temporary
and an extra pass over ``out``: for a large InnerProduct weight at small batch
that pass costs as much as the product itself. SciPy exposes BLAS ``gemm``
with ``beta``; this wrapper feeds it C-ordered arrays and their transposes
without copies (BLAS is column-major, so it computes ``out.T = b.T @ a.T``).
"""
import numpy as np
from scipy.linalg import blas as _blas

_GEMM = {np.dtype(np.float32): _blas.sgemm, np.dtype(np.float64): _blas.dgemm}


def _fortran_operand(x):
    """(array BLAS can read without a copy, transpose flag)."""
    if x.flags.f_contiguous:
        return x, 0
    if x.flags.c_contiguous:
        return x.T, 1
    return np.asfortranarray(x), 0


def gemm(a, b, out, alpha=1.0, beta=0.0):
    """``out[...] = alpha * a @ b + beta * out`` for 2-d arrays; ``out`` C-contiguous."""
    if beta == 0.0 and alpha == 1.0:
        np.matmul(a, b, out=out)
        return out
    assert out.flags.c_contiguous, 'gemm: out must be C-contiguous'
    if out.size == 0:
        return out
    if a.shape[1] == 0:
        out *= beta
        return out
    bt, tb = _fortran_operand(b.T)
    at, ta = _fortran_operand(a.T)
    result = _GEMM[out.dtype](alpha, bt, at, beta=beta, c=out.T, trans_a=tb, trans_b=ta,
                              overwrite_c=1)
    if not np.shares_memory(result, out):  # BLAS wrote a copy: should not happen
        out[...] = result.T
    return out
