import numpy as np
import pytest

from layerasync.kernels import blas


@pytest.mark.parametrize('shape', [(500, 64, 800), (3, 5, 7), (1, 4, 1), (0, 3, 2)])
@pytest.mark.parametrize('beta', [0.0, 1.0, 0.5])
def test_gemm_accumulates_in_blocks(monkeypatch, shape, beta):
    monkeypatch.setattr(blas, 'BLOCK_BYTES', 4 * 800 * 3)   # blocks of 3 rows: a ragged last one
    m, k, n = shape
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    out = rng.standard_normal((m, n))
    expected = a @ b + beta * out
    np.testing.assert_allclose(blas.gemm(a, b, out, beta=beta), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_gemm_reads_transposed_views():
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((6, 9)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    out = np.ones((4, 9), np.float32)
    blas.gemm(dy.T, x, out, beta=1.0)
    np.testing.assert_allclose(out, 1 + dy.T @ x, rtol=1e-5)
