"""Convolution algorithms side by side, per layer shape: im2col + GEMM, Winograd
F(2x2, 3x3) and F(4x4, 3x3), and PyTorch's ``F.conv2d`` with autograd.

    make bench-conv   # = .venv/bin/python benchmarks/conv_algorithms.py

For every distinct 3x3 stride-1 convolution of the nets given (default: the
zoo's resnet20 at its batch, 64, and resnet50 at batch 16) it builds one
Convolution layer per algorithm (``convolution_param { algorithm }``, the
tile forced through ``layerasync.layers.vision.WINOGRAD_TILE``), all with the
same weights, input and upstream gradient, in float32, and times forward
and backward (input and weight gradients) of each, and of PyTorch's
``F.conv2d`` + ``torch.autograd.grad`` on the same tensors. Also the
backward with the weight gradient alone, ours only: the choice between the
Winograd and the im2col weight gradient.

One thread (OMP_NUM_THREADS=1 and ``torch.set_num_threads(1)``) under the
allocator setting of benchmarks/vs_pytorch.py; the script starts itself
again with that environment if it was not given. Every variant runs once
before timing (Numba compiles, or loads its cache, then); then ``--rounds``
rounds, each timing every variant ``--iterations`` times in turn (the order
rotating from round to round), and each time is the median over the rounds.
The table gives milliseconds per call and the ratios of the forward +
backward times, and which algorithm the layer's AUTO rule picks.
"""
import argparse
import os
import statistics
import sys
import time

ALLOCATOR = 'glibc.malloc.mmap_threshold=33554432'
THREADS = {'OMP_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
NETS = 'resnet20,resnet50:16'


def ensure_environment():
    """Start again with one BLAS thread and the allocator setting, before NumPy loads."""
    wanted = dict(THREADS, GLIBC_TUNABLES=ALLOCATOR)
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, **wanted))


def shapes(nets, extra=''):
    """{(C, M, H, W, pad, bias, batch): [(net, layer name), ...]} of the 3x3 stride-1 group-1
    convolutions of ``nets`` ('name' or 'name:batch', comma-separated), then of
    ``extra`` ('C:M:H:W:batch', comma-separated; pad 1, no bias)."""
    from layerasync.bench import make_solver
    found = {}
    for spec in filter(None, extra.split(',')):
        c, m, h, w, n = map(int, spec.split(':'))
        found.setdefault((c, m, h, w, (1, 1), False, n), []).append(('shape', spec))
    for spec in filter(None, nets.split(',')):
        name, _, batch = spec.partition(':')
        net = make_solver(name, int(batch) if batch else None, 0, 1, prefetch=False).net
        for i, layer in enumerate(net.layers):
            if layer.type == 'Convolution' and layer.winograd_shape:
                n, c, h, w = net.bottom_vecs[i][0].shape
                key = (c, layer.param.num_output, h, w, layer.pad, layer.param.bias_term, n)
                found.setdefault(key, []).append((name, layer.name))
    return found


class Ours:
    """One Convolution layer with a given algorithm and tile, on shared arrays."""

    def __init__(self, algorithm, tile, shape, weights, bias, x, dy):
        import numpy as np
        from layerasync import proto, schema
        from layerasync.blob import Blob
        from layerasync.layers import LAYERS
        import layerasync.layers.vision as vision
        c, m, h, w, pad, has_bias, n = shape
        text = (f'name: "conv" type: "Convolution" convolution_param {{ num_output: {m} '
                f'kernel_size: 3 pad_h: {pad[0]} pad_w: {pad[1]} bias_term: {str(has_bias).lower()} '
                f'algorithm: {algorithm} }}')
        spec = proto.parse(text, schema.LayerParameter, '<bench>')
        self.layer = LAYERS['Convolution'](spec, 'TRAIN', np.float32, np.random.default_rng(0))
        self.bottom, self.top = [Blob(x.shape, np.float32, name='x')], [Blob((), np.float32, name='y')]
        self.bottom[0].data[...] = x
        self.layer.setup(self.bottom, self.top)
        self.layer.param_propagate_down = [True] * len(self.layer.blobs)
        saved, vision.WINOGRAD_TILE = vision.WINOGRAD_TILE, tile
        try:
            self.layer.reshape(self.bottom, self.top)
        finally:
            vision.WINOGRAD_TILE = saved
        self.layer.blobs[0].data[...] = weights
        if has_bias:
            self.layer.blobs[1].data[...] = bias
        self.top[0].diff[...] = dy
        self.tile = self.layer.tile

    def forward(self):
        self.layer.forward(self.bottom, self.top)

    def backward(self, weights_only=False):
        self.layer.backward(self.top, [not weights_only], self.bottom)


class Torch:
    def __init__(self, shape, weights, bias, x, dy):
        import torch
        self.torch = torch
        self.pad = shape[4]
        self.x = torch.tensor(x, requires_grad=True)
        self.w = torch.tensor(weights, requires_grad=True)
        self.b = torch.tensor(bias, requires_grad=True) if shape[5] else None
        self.dy = torch.tensor(dy)
        self.inputs = [t for t in (self.x, self.w, self.b) if t is not None]

    def forward(self):
        self.y = self.torch.nn.functional.conv2d(self.x, self.w, self.b, padding=self.pad)

    def backward(self, weights_only=False):
        self.torch.autograd.grad(self.y, self.inputs, self.dy)


def time_variant(variant, iterations, weights_only):
    """Per call seconds: (forward, backward) medians over ``iterations``."""
    forward, backward = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        variant.forward()
        t1 = time.perf_counter()
        variant.backward(weights_only)
        t2 = time.perf_counter()
        forward.append(t1 - t0)
        backward.append(t2 - t1)
    return statistics.median(forward), statistics.median(backward)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--nets', default=NETS, help=f'nets, NAME or NAME:BATCH (default {NETS})')
    p.add_argument('--shapes', default='', metavar='C:M:H:W:N,...',
                   help='more shapes: C input and M output channels, H x W, batch N (pad 1)')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--iterations', type=int, default=3, help='calls per variant per round')
    p.add_argument('--no-torch', action='store_true', help='leave PyTorch out')
    args = p.parse_args()
    ensure_environment()
    import numpy as np
    from layerasync.layers.vision import winograd_tile
    have_torch = not args.no_torch
    if have_torch:
        import torch
        torch.set_num_threads(1)

    print(f'3x3 stride-1 convolutions of {args.nets}, float32, one thread; ms per call, '
          f'median of {args.rounds} rounds of {args.iterations}\n')
    head = ('| layers | C→M, H×W, batch | im2col fwd / bwd | F(2x2) fwd / bwd | F(4x4) fwd / bwd '
            + ('| PyTorch fwd / bwd ' if have_torch else '')
            + '| weight grad only: im2col / F(2x2) / F(4x4) | F(2x2) / im2col | F(4x4) / im2col '
            + ('| im2col / PyTorch | best / PyTorch ' if have_torch else '') + '| AUTO |')
    print(head)
    print('|' + '---|' * (head.count('|') - 1))
    for shape, where in shapes(args.nets, args.shapes).items():
        c, m, h, w, pad, has_bias, n = shape
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        weights = (rng.standard_normal((m, c, 3, 3)) * (2 / (9 * c)) ** 0.5).astype(np.float32)
        bias = rng.standard_normal(m).astype(np.float32)
        ho, wo = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
        dy = rng.standard_normal((n, m, ho, wo)).astype(np.float32)
        variants = {'im2col': Ours('IM2COL', None, shape, weights, bias, x, dy),
                    'F2': Ours('WINOGRAD', 2, shape, weights, bias, x, dy),
                    'F4': Ours('WINOGRAD', 4, shape, weights, bias, x, dy)}
        if have_torch:
            variants['torch'] = Torch(shape, weights, bias, x, dy)
        runs = [(name, False) for name in variants] + [(name, True) for name in ('im2col', 'F2', 'F4')]
        for name, weights_only in runs:     # warm-up: compiles or loads the kernels
            time_variant(variants[name], 1, weights_only)
        times = {run: [] for run in runs}
        for r in range(args.rounds):
            for name, weights_only in runs[r % len(runs):] + runs[:r % len(runs)]:
                times[name, weights_only].append(time_variant(variants[name], args.iterations, weights_only))
        ms = {run: tuple(1e3 * statistics.median(t[k] for t in values) for k in (0, 1))
              for run, values in times.items()}
        total = {name: sum(ms[name, False]) for name in variants}
        tile = winograd_tile(c, m, ho, wo)
        names = sorted({layer for _, layer in where})
        label = f'{where[0][0]} {names[0]}' + (f' (+{len(names) - 1})' if len(names) > 1 else '')
        if where[0][0] == 'shape':
            label = 'shape'
        cells = [label, f'{c}→{m}, {h}×{w}, {n}']
        cells += ['{:.2f} / {:.2f}'.format(*ms[name, False]) for name in variants]
        cells.append(' / '.join(f'{ms[name, True][1]:.2f}' for name in ('im2col', 'F2', 'F4')))
        cells += [f'{total["F2"] / total["im2col"]:.2f}', f'{total["F4"] / total["im2col"]:.2f}']
        if have_torch:
            best = min(total['im2col'], total['F2'], total['F4'])
            cells += [f'{total["im2col"] / total["torch"]:.2f}', f'**{best / total["torch"]:.2f}**']
        cells.append(f'F({tile}x{tile})' if tile else 'im2col')
        print('| ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
    main()
