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


def test_gemm_workspace_is_per_thread_and_reused():
    """Threads accumulating at once each use their own block buffer; a thread
    reuses its buffer from call to call."""
    import threading
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((300, 40)), rng.standard_normal((40, 500))
    product = a @ b
    errors, buffers = [], {}

    def accumulate(name):
        out = np.zeros((300, 500))
        for _ in range(20):
            blas.gemm(a, b, out, beta=1.0)
        errors.append(np.abs(out - 20 * product).max())
        buffers[name] = blas._workspace(1, out.dtype)

    threads = [threading.Thread(target=accumulate, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(errors) < 1e-9
    assert buffers[0] is not buffers[1]
    blas.gemm(a, b, np.zeros((300, 500)), beta=1.0)
    first = blas._workspace(1, np.dtype(np.float64))
    blas.gemm(a, b, np.zeros((300, 500)), beta=1.0)
    assert blas._workspace(1, np.dtype(np.float64)) is first
