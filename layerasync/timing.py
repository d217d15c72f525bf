"""Per-layer forward/backward timing, as ``caffe time``, and the JSON profile.

Times are taken through the net's own per-layer hooks, so what is measured is
exactly what training runs. The first pass compiles the Numba kernels (or
loads them from the cache) and is reported separately, never averaged in.
The profile (per-layer milliseconds and parameter bytes) is what the cluster
simulator extrapolates from.
"""
import time

import numpy as np

from ._threads import blas_threads

__all__ = ['profile_net', 'fill_inputs', 'format_profile']


def fill_inputs(net, seed=0):
    """Random data in every Input top; label-like tops get class 0 (valid everywhere)."""
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = 0 if 'label' in name else rng.standard_normal(blob.shape)


def profile_net(net, iterations=10):
    """Time ``iterations`` forward/backward passes after one untimed warm-up pass.

    Returns a dict: net, batch, threads, warmup_s, forward_ms, backward_ms,
    total_ms (means per iteration), param_bytes and, per layer, name, type,
    forward_ms, backward_ms, forward_calls and backward_calls (the progress
    calls it makes per pass, between chunks of its work), param_bytes, blobs
    (parameter shapes) and tops (output shapes).
    """
    n = len(net.layers)
    fwd, bwd = np.zeros(n), np.zeros(n)
    marks = np.zeros(n + 1)
    # Progress calls per layer and phase: where a replay of the profile calls them too.
    calls = np.zeros((2, n), np.int64)
    running = [0, 0]   # (phase, layer) the net is in

    def mark_forward(i):
        running[:] = 0, i
        marks[i] = time.perf_counter()

    def mark_backward(i):
        running[:] = 1, i - 1   # layer i-1's backward comes next
        marks[i] = time.perf_counter()

    def count_call():
        calls[running[0], running[1]] += 1

    start = time.perf_counter()
    net.forward()
    net.backward()
    warmup = time.perf_counter() - start
    total_fwd = total_bwd = 0.0
    progress = [layer.progress for layer in net.layers]
    net.set_progress(count_call)
    for _ in range(iterations):
        t0 = time.perf_counter()
        net.forward(before_layer=mark_forward)
        marks[n] = t1 = time.perf_counter()
        fwd += np.diff(marks)
        running[:] = 1, n - 1
        net.backward(after_layer=mark_backward)
        t2 = time.perf_counter()
        # after_layer(i) follows layer i's backward; layer n-1 starts the pass.
        ends = marks[:n]
        starts = np.append(marks[1:n], t1)
        bwd += ends - starts
        total_fwd += t1 - t0
        total_bwd += t2 - t1
    for layer, hook in zip(net.layers, progress):
        layer.progress = hook
    net.clear_param_diffs()
    layers = []
    for i, layer in enumerate(net.layers):
        layers.append({
            'name': layer.name, 'type': layer.type,
            'forward_ms': 1e3 * fwd[i] / iterations, 'backward_ms': 1e3 * bwd[i] / iterations,
            'forward_calls': int(calls[0, i]) // iterations,
            'backward_calls': int(calls[1, i]) // iterations,
            'param_bytes': int(sum(b.data.nbytes for b in layer.blobs)),
            'blobs': [list(b.data.shape) for b in layer.blobs],
            'tops': [list(t.shape) for t in net.top_vecs[i]]})
    return {
        'net': net.name, 'batch': net.batch_size,
        'threads': blas_threads(), 'iterations': iterations, 'warmup_s': warmup,
        'forward_ms': 1e3 * total_fwd / iterations, 'backward_ms': 1e3 * total_bwd / iterations,
        'total_ms': 1e3 * (total_fwd + total_bwd) / iterations,
        'param_bytes': int(net.arena.nbytes), 'layers': layers}


def format_profile(profile):
    """The table ``caffe time`` prints, one row per layer and the totals."""
    rows = [f"{'layer':<28} {'type':<16} {'forward ms':>11} {'backward ms':>12} {'params MB':>10}"]
    for layer in profile['layers']:
        rows.append(f"{layer['name'][:28]:<28} {layer['type'][:16]:<16} {layer['forward_ms']:>11.3f} "
                    f"{layer['backward_ms']:>12.3f} {layer['param_bytes'] / 1e6:>10.3f}")
    rows.append(f"{'total':<45} {profile['forward_ms']:>11.3f} {profile['backward_ms']:>12.3f} "
                f"{profile['param_bytes'] / 1e6:>10.3f}")
    rows.append(f"Average forward-backward: {profile['total_ms']:.3f} ms over {profile['iterations']} "
                f"iterations at batch {profile['batch']} ({profile['threads']} threads); "
                f"first pass (compile/warm-up): {profile['warmup_s']:.2f} s")
    return '\n'.join(rows)
