"""Our nets against the same nets in PyTorch, on the CPU, in one run.

    make bench-pytorch    # = .venv/bin/python benchmarks/vs_pytorch.py --json out/vs_pytorch.json

For every zoo net (lenet, alexnet-mini, resnet20 at batch 64; alexnet,
googlenet and resnet50 at batch 16; gpt-mini at batch 32, context 128) it
builds our Net through the solver (synthetic data for Data-layer nets:
random images, or random token ids for gpt-mini's text; ``fill_inputs`` for
Input-layer nets) and a PyTorch model
generated from the same layer graph (``net.layers``, ``bottom_names``,
``top_names``) with a copy of the same weights (a BatchNorm followed by a
Scale becomes PyTorch's one affine batch norm, as a PyTorch user writes it), then:

1. checks that the two compute the same function: on the same batch, with
   our dropout masks replayed in PyTorch, the losses agree and every
   parameter gradient agrees with PyTorch's float64 result within ``--rtol``
   of its norm, or within twice PyTorch's own float32 error;
2. times whole iterations, forward + backward + solver step (our
   ``solver.update()``; PyTorch's ``SGD(momentum)``, or for a net whose zoo
   solver is AdamW, gpt-mini's, both sides run AdamW with that solver's
   betas, epsilon, weight decay and gradient clipping, PyTorch's as
   ``clip_grad_norm_`` + ``AdamW``), alternating ours and PyTorch's in
   ``--rounds`` rounds after a warm-up; medians and ranges;
3. times every layer's forward and backward in isolation, for both, on the
   same inputs and upstream gradients, also alternating (here BatchNorm and
   Scale are two PyTorch ops, like ours); the report lists the layers that
   lose most and the sums per layer type.

The Transformer layers become what a PyTorch user writes: ``F.embedding``,
a broadcast add for Bias, ``F.layer_norm``, ``F.gelu``, token-wise
``F.linear``, ``F.cross_entropy`` on the flattened positions, and for
MultiHeadAttention a GPT's attention as nanoGPT writes it: ``F.linear`` to
q, k, v (our ``in_proj_weight``/``in_proj_bias``, the layout of
``nn.MultiheadAttention``), ``F.scaled_dot_product_attention(is_causal=True)``
(PyTorch's fused kernel), ``F.linear`` with ``out_proj``'s weight and bias.
That is the same function as ``nn.MultiheadAttention(batch_first=True)``
with ``need_weights=False``, whose path transposes to (T, N, D) and back
around the same fused kernel and is the slower of the two.

Each thread setting (``--threads 1,2``) runs in a fresh subprocess whose
environment fixes the BLAS threads before NumPy is imported (OMP, OpenBLAS,
MKL) and which calls ``torch.set_num_threads``; both sides run under the same
allocator setting (``GLIBC_TUNABLES`` mmap threshold 32 MB, so that large
temporaries are not fresh mmaps whose page faults add noise). Each worker
also measures the float32 GEMM rate of NumPy's and PyTorch's BLAS, and the
script reports the FLOP rate each net reaches (convolution and inner-product
products, forward and backward) as a fraction of it. Numba's first-call
compile time is measured apart, in a process with an empty cache directory
(``NUMBA_CACHE_DIR``), then again in one that loads that cache.

The package itself never imports torch; this script is its only user.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

NETS = (('lenet', 64), ('alexnet-mini', 64), ('resnet20', 64), ('alexnet', 16), ('googlenet', 16),
        ('resnet50', 16), ('gpt-mini', 32))
ALLOCATOR = 'glibc.malloc.mmap_threshold=33554432'
# Layers whose work is nil in both frameworks (views, inputs) or that PyTorch has no op for.
UNTIMED = {'Data', 'Input', 'Accuracy', 'Flatten', 'Reshape'}


# -- our side -----------------------------------------------------------------

def build_solver(model, batch):
    """The bench's fixed-rate SGD solver for ``model`` at ``batch``; for a net
    whose zoo solver is AdamW, an AdamW solver with that file's settings
    (betas, epsilon, weight decay, gradient clipping) at a fixed rate."""
    from layerasync import models, proto, schema
    from layerasync.bench import make_solver
    from layerasync.data import DataOptions
    from layerasync.net import load_net_param, set_batch_size
    from layerasync.solver import get_solver, load_solver_param
    from layerasync.timing import fill_inputs
    zoo = load_solver_param(models.resolve(model, 'solver'))
    # No prefetch thread: batch preparation then runs, and is timed, in the
    # measured thread, rather than competing for the core unseen.
    if zoo.type == 'AdamW':
        # The rate's policy and warm-up only scale the rate: fixed here.
        param = proto.parse(
            f'type: "AdamW" base_lr: {zoo.base_lr!r} momentum: {zoo.momentum!r} '
            f'momentum2: {zoo.momentum2!r} delta: {zoo.delta!r} '
            f'weight_decay: {zoo.weight_decay!r} clip_gradients: {zoo.clip_gradients!r} '
            'lr_policy: "fixed" random_seed: 1', schema.SolverParameter)
        param.net_param = set_batch_size(load_net_param(models.resolve(model, 'net')), batch)
        solver = get_solver(param, data=DataOptions(synthetic=True, prefetch=False))
    else:
        solver = make_solver(model, batch, 0, 1, prefetch=False)
    fill_inputs(solver.net)
    return solver


def input_names(net):
    """Blobs made by Data/Input layers: what PyTorch gets as given tensors."""
    return [n for layer, tops in zip(net.layers, net.top_names)
            if layer.type in ('Data', 'Input') for n in tops]


def our_iteration(solver):
    """(forward, backward, update) seconds of one training iteration."""
    t0 = time.perf_counter()
    solver.net.forward()
    t1 = time.perf_counter()
    solver.net.backward()
    t2 = time.perf_counter()
    solver.update()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def flops(net):
    """Multiply-adds x 2 of the convolution, inner-product and attention
    products of one iteration: forward, weight gradient, and input gradient
    where needed. Attention counts its projections as inner products and its
    two products per head (q k^T, probabilities times v) whole, the masked
    half of a causal one included, as both frameworks compute them: twice
    as many again backward."""
    total = 0
    for i, layer in enumerate(net.layers):
        core = 0
        if layer.type == 'Convolution':
            n = net.bottom_vecs[i][0].shape[0]
            one = 2 * n * layer.param.num_output * layer.P * (layer.K // layer.group)
        elif layer.type == 'InnerProduct':
            n = net.bottom_vecs[i][0].count // layer.K
            one = 2 * n * layer.param.num_output * layer.K
        elif layer.type == 'MultiHeadAttention':
            n, t, d = net.bottom_vecs[i][0].shape
            one = 2 * n * t * 4 * d * d               # q, k, v and the output projection
            core = 2 * 2 * n * t * t * d              # both products, all heads
            core *= 3 if net.layer_need_backward[i] else 1
        else:
            continue
        products = 1 + layer.param_propagate_down[0] + net.bottom_need_backward[i][0]
        total += one * len(net.bottom_vecs[i]) * products + core
    return total


# -- PyTorch side -------------------------------------------------------------

def torch_layer(layer, bottom, top, inplace):
    """(fn, params): ``fn(xs, params, mask)`` -> list of tops, as ``layer``
    computes them; ``params`` are torch tensors of the layer's learned blobs.
    ``inplace``: use PyTorch's in-place ReLU where our layer runs in place."""
    import torch
    import torch.nn.functional as F
    t, p = layer.type, layer.param
    shapes = [tuple(b.shape) for b in top]
    learned = [k for k in range(len(layer.blobs)) if layer.type != 'BatchNorm']
    params = [torch.tensor(layer.blobs[k].data) for k in learned]

    if t == 'Convolution':
        def fn(xs, ps, mask):
            bias = ps[1] if p.bias_term else None
            return [F.conv2d(x, ps[0], bias, layer.stride, layer.pad, layer.dilation, layer.group)
                    for x in xs]
    elif t == 'Pooling':
        kernel = tuple(layer.kernel)
        ceil = p.round_mode == 'CEIL'
        if p.pool == 'MAX':
            def fn(xs, ps, mask):
                return [F.max_pool2d(xs[0], kernel, layer.stride, layer.pad, ceil_mode=ceil)]
        else:
            def fn(xs, ps, mask):
                return [F.avg_pool2d(xs[0], kernel, layer.stride, layer.pad, ceil_mode=ceil,
                                     count_include_pad=True)]
    elif t == 'LRN':
        if not layer.across:
            raise NotImplementedError('LRN WITHIN_CHANNEL has no PyTorch op')
        # torch: x / (k + alpha/size * sum over size channels of x^2)^beta, Caffe's formula.
        def fn(xs, ps, mask):
            return [F.local_response_norm(xs[0], p.local_size, p.alpha, p.beta, p.k)]
    elif t == 'ReLU':
        slope, in_place = p.negative_slope, inplace and top[0] is bottom[0]
        def fn(xs, ps, mask):
            if slope:
                return [F.leaky_relu(xs[0], slope, inplace=in_place)]
            return [F.relu(xs[0], inplace=in_place)]
    elif t == 'Dropout':
        def fn(xs, ps, mask):
            if layer.phase != 'TRAIN':
                return [xs[0]]
            if mask is not None:
                return [xs[0] * mask.reshape(xs[0].shape)]
            return [F.dropout(xs[0], layer.ratio, training=True)]
    elif t == 'InnerProduct':
        def fn(xs, ps, mask):
            w = ps[0].t() if p.transpose else ps[0]
            y = F.linear(xs[0].reshape(-1, layer.K), w, ps[1] if p.bias_term else None)
            return [y.reshape(shapes[0])]
    elif t == 'Softmax':
        def fn(xs, ps, mask):
            return [F.softmax(xs[0], dim=layer.axis)]
    elif t == 'SoftmaxWithLoss':
        # Classes on the last axis ((N, C), or gpt-mini's (N, T, V) with axis 2):
        # cross_entropy on the flattened positions, as a PyTorch user writes it.
        flat = (layer.outer, layer.classes) if layer.inner == 1 else (layer.outer, layer.classes,
                                                                     layer.inner)
        def fn(xs, ps, mask):
            scores = xs[0].reshape(flat)
            labels = xs[1].reshape(flat[:1] + flat[2:]).long()
            if layer.ignore_label is None:
                normalizer = layer._normalizer(labels.numel())
                loss = F.cross_entropy(scores, labels, reduction='sum')
            else:
                normalizer = layer._normalizer(int((labels != layer.ignore_label).sum()))
                loss = F.cross_entropy(scores, labels, ignore_index=layer.ignore_label,
                                       reduction='sum')
            return [(loss / normalizer).reshape(())]
    elif t == 'Concat':
        def fn(xs, ps, mask):
            return [torch.cat(xs, dim=layer.axis)]
    elif t == 'Slice':
        def fn(xs, ps, mask):
            return list(torch.split(xs[0], layer.sizes, dim=layer.axis))
    elif t == 'Split':
        def fn(xs, ps, mask):
            return [xs[0]] * len(top)
    elif t == 'Eltwise':
        def fn(xs, ps, mask):
            if layer.op == 'SUM':
                y = xs[0] if layer.coeff[0] == 1 else xs[0] * layer.coeff[0]
                for c, x in zip(layer.coeff[1:], xs[1:]):
                    y = y + (x if c == 1 else c * x)
            elif layer.op == 'PROD':
                y = xs[0]
                for x in xs[1:]:
                    y = y * x
            else:
                y = xs[0]
                for x in xs[1:]:
                    y = torch.maximum(y, x)
            return [y]
    elif t in ('Flatten', 'Reshape'):
        def fn(xs, ps, mask):
            return [xs[0].reshape(shapes[0])]
    elif t == 'BatchNorm':
        buffers = {}  # running statistics, one pair per dtype
        def fn(xs, ps, mask):
            stats = buffers.setdefault(xs[0].dtype, (torch.zeros(layer.channels, dtype=xs[0].dtype),
                                                      torch.ones(layer.channels, dtype=xs[0].dtype)))
            return [F.batch_norm(xs[0], *stats, training=not layer.use_global_stats,
                                 momentum=1 - p.moving_average_fraction, eps=p.eps)]
    elif t == 'Scale':
        outer, dim, inner = layer.dims
        def fn(xs, ps, mask):
            x = xs[0].reshape(outer, dim, inner)
            scale = (xs[1] if len(xs) > 1 else ps[0]).reshape(1, dim, 1)
            y = torch.addcmul(ps[-1].reshape(1, dim, 1), x, scale) if p.bias_term else x * scale
            return [y.reshape(shapes[0])]
    elif t == 'TanH':
        def fn(xs, ps, mask):
            return [torch.tanh(xs[0])]
    elif t == 'Sigmoid':
        def fn(xs, ps, mask):
            return [torch.sigmoid(xs[0])]
    elif t == 'Embed':
        # Ids come in a float blob, as Caffe's labels.
        def fn(xs, ps, mask):
            y = F.embedding(xs[0].long(), ps[0])
            return [y + ps[1] if p.bias_term else y]
    elif t == 'Bias':
        outer, dim, inner = layer.dims   # the bias over the middle, broadcast over the rest
        def fn(xs, ps, mask):
            y = xs[0].reshape(outer, dim, inner) + ps[0].reshape(1, dim, 1)
            return [y.reshape(shapes[0])]
    elif t == 'LayerNorm':
        def fn(xs, ps, mask):
            return [F.layer_norm(xs[0], (layer.features,), ps[0], ps[1], p.eps)]
    elif t == 'GELU':
        approximate = 'tanh' if layer.tanh_form else 'none'
        def fn(xs, ps, mask):
            return [F.gelu(xs[0], approximate=approximate)]
    elif t == 'MultiHeadAttention':
        if layer.dropout:
            raise NotImplementedError('attention dropout: our masks cannot be replayed in PyTorch')
        n, positions, d = shapes[0]
        heads, causal = layer.heads, layer.causal
        # As a GPT is written in PyTorch (nanoGPT's CausalSelfAttention): one
        # projection to q, k, v, PyTorch's fused attention, the output
        # projection. Our blobs are in nn.MultiheadAttention's layout
        # (in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias);
        # its own path, for the same function, transposes to (T, N, D) and
        # back around the same scaled_dot_product_attention, and is slower.
        def fn(xs, ps, mask):
            q, k, v = (z.view(n, positions, heads, d // heads).transpose(1, 2)
                       for z in F.linear(xs[0], ps[0], ps[1]).split(d, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return [F.linear(y.transpose(1, 2).reshape(n, positions, d), ps[2], ps[3])]
    else:
        raise NotImplementedError(f'no PyTorch counterpart for layer type {t}')
    return fn, params


def _scale_follows(net, i):
    """Layer i is a BatchNorm whose output only the Scale right after it reads."""
    if net.layers[i].type != 'BatchNorm' or i + 1 >= len(net.layers):
        return False
    scale, made = net.layers[i + 1], net.top_names[i][0]
    in_place = net.top_names[i + 1] == [made]
    return (scale.type == 'Scale' and net.bottom_names[i + 1] == [made]
            and (in_place or not any(made in names for names in net.bottom_names[i + 2:])))


def torch_affine_batch_norm(norm, scale):
    """(fn, params) of PyTorch's batch norm with Scale's weight and bias."""
    import torch
    import torch.nn.functional as F
    p = norm.param
    params = [torch.tensor(b.data) for b in scale.blobs]
    buffers = {}

    def fn(xs, ps, mask):
        x = xs[0]
        stats = buffers.setdefault(x.dtype, (torch.zeros(norm.channels, dtype=x.dtype),
                                             torch.ones(norm.channels, dtype=x.dtype)))
        return [F.batch_norm(x, *stats, ps[0], ps[1] if len(ps) > 1 else None,
                             training=not norm.use_global_stats,
                             momentum=1 - p.moving_average_fraction, eps=p.eps)]
    return fn, params


def torch_model(net):
    """A torch.nn.Module running ``net``'s graph with copies of its weights."""
    import torch

    class GraphModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []        # (layer index, fn, bottom names, top names, param range)
            self.by_blob = {}      # (layer index, blob k) -> param index
            weights = []
            fused = set()
            for i, layer in enumerate(net.layers):
                if layer.type in ('Data', 'Input', 'Accuracy') or i in fused:
                    continue
                owner, tops = i, net.top_names[i]
                if _scale_follows(net, i):
                    # BatchNorm then Scale is what PyTorch writes as one affine
                    # batch norm: a user's model would run the fused op.
                    owner, tops = i + 1, net.top_names[i + 1]
                    fused.add(owner)
                    fn, params = torch_affine_batch_norm(layer, net.layers[owner])
                else:
                    fn, params = torch_layer(layer, net.bottom_vecs[i], net.top_vecs[i],
                                             inplace=True)
                first = len(weights)
                for k, w in enumerate(params):
                    self.by_blob[owner, k] = len(weights)
                    weights.append(w)
                self.steps.append((i, fn, net.bottom_names[i], tops, slice(first, len(weights))))
            self.weights = torch.nn.ParameterList(weights)
            self.losses = [(name, w) for weights_i, names in zip(net.loss_weights, net.top_names)
                           for w, name in zip(weights_i, names) if w]

        def forward(self, inputs, masks=None):
            blobs = dict(inputs)
            params = list(self.weights)
            for i, fn, bottoms, tops, span in self.steps:
                mask = masks.get(i) if masks else None
                for name, y in zip(tops, fn([blobs[b] for b in bottoms], params[span], mask)):
                    blobs[name] = y
            return sum(w * blobs[name] for name, w in self.losses)

    return GraphModule()


def torch_optimizer(solver, model):
    """Our solver's rule in PyTorch: SGD with momentum, or AdamW (betas momentum
    and momentum2, eps delta); param groups carry Caffe's lr_mult / decay_mult."""
    import torch
    net, p = solver.net, solver.param
    rate = solver.learning_rate()
    groups = {}
    for (i, k), index in model.by_blob.items():
        spec = net.param_specs[i][k]
        if spec.lr_mult:
            groups.setdefault((spec.lr_mult, spec.decay_mult), []).append(model.weights[index])
    groups = [{'params': ps, 'lr': rate * lr, 'weight_decay': p.weight_decay * decay}
              for (lr, decay), ps in groups.items()]
    if solver.type == 'AdamW':
        return torch.optim.AdamW(groups, lr=rate, betas=(p.momentum, p.momentum2), eps=p.delta)
    if solver.type != 'SGD':
        raise NotImplementedError(f'no PyTorch optimizer for solver type {solver.type}')
    return torch.optim.SGD(groups, lr=rate, momentum=p.momentum)


def clip_norm(solver):
    """The global gradient norm our solver clips to (None: it does not clip)."""
    clip = solver.param.clip_gradients
    return clip if clip > 0 else None


def torch_inputs(net):
    import torch
    return {name: torch.tensor(net.blobs[name].data) for name in input_names(net)}


def torch_iteration(model, optimizer, inputs, clip=None):
    from torch.nn.utils import clip_grad_norm_
    t0 = time.perf_counter()
    loss = model(inputs)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    if clip is not None:   # as our solver's clip_gradients, part of its update
        clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


# -- the comparison ----------------------------------------------------------

def check_same_function(solver, model, rtol):
    """One iteration's loss and parameter gradients: ours and PyTorch's, both
    float32, against PyTorch's in float64 on the same batch and dropout masks.

    Float32 gradients of a deep net differ by more than rounding from one
    summation order to another, so ours are held to ``rtol`` of the norm of
    the float64 result, or to twice PyTorch's float32 error if that is larger.
    A blob whose float64 gradient is zero but for rounding (at most 1e-10 of
    the largest of its layer's, as a convolution bias under a BatchNorm) is
    held to that largest norm instead: its float32 gradient is rounding noise.
    Returns {loss: [ours, torch, float64], error: {ours, torch}: (worst
    relative gradient error, its blob)}."""
    import copy

    import numpy as np
    import torch
    net = solver.net
    net.clear_param_diffs()
    net.forward()
    net.backward()
    masks = {i: torch.tensor(layer.mask) for i, layer in enumerate(net.layers)
             if layer.type == 'Dropout' and layer.phase == 'TRAIN'}
    inputs = torch_inputs(net)
    exact = copy.deepcopy(model).double()
    losses = []
    for m, dtype in ((model, torch.float32), (exact, torch.float64)):
        m.zero_grad()
        loss = m({k: v.to(dtype) for k, v in inputs.items()},
                 {i: v.to(dtype) for i, v in masks.items()})
        loss.backward()
        losses.append(float(loss.detach()))
    errors = {'ours': (0.0, None), 'torch': (0.0, None)}
    checked = [(i, k, index, exact.weights[index].grad.numpy())
               for (i, k), index in model.by_blob.items() if net.layers[i].param_propagate_down[k]]
    largest = {}   # per layer: the largest norm of its blobs' float64 gradients
    for i, _, _, reference in checked:
        largest[i] = max(largest.get(i, 0.0), np.linalg.norm(reference))
    for i, k, index, reference in checked:
        scale, where = np.linalg.norm(reference), f'{net.layers[i].name}[{k}]'
        if scale <= 1e-10 * largest[i]:
            # Zero but for rounding (resnet50's conv1 bias under a BatchNorm):
            # float32's is rounding noise, measured against the layer's gradient.
            scale, where = largest[i], where + ' (zero in float64)'
        scale = max(scale, 1e-30)
        for side, grad in (('ours', net.layers[i].blobs[k].diff),
                           ('torch', model.weights[index].grad.numpy())):
            error = np.linalg.norm(grad.astype(np.float64) - reference) / scale
            if error > errors[side][0]:
                errors[side] = (error, where)
    net.clear_param_diffs()
    model.zero_grad()
    loss_ok = abs(net.loss - losses[1]) <= rtol * max(abs(losses[1]), 1e-6)
    # Deep nets: PyTorch's own float32 may miss by more than rtol; ours may too, by
    # no more than twice as much.
    tolerance = max(rtol, 2 * errors['torch'][0])
    if not (loss_ok and errors['ours'][0] <= tolerance):
        raise SystemExit(f'{net.name}: not the same function: loss {net.loss:.6g}, PyTorch '
                         f'float64 {losses[1]:.6g}; gradient error {errors["ours"][0]:.2e} at '
                         f'{errors["ours"][1]} (tolerance {tolerance:.2e} of the norm; PyTorch '
                         f'float32: {errors["torch"][0]:.2e} at {errors["torch"][1]})')
    return {'loss': [net.loss] + losses, 'error': errors}


def time_iterations(solver, model, optimizer, rounds, iterations, warmup, log):
    """Per framework: per-phase lists of seconds, alternating in rounds."""
    inputs, clip = torch_inputs(solver.net), clip_norm(solver)
    for _ in range(warmup):
        our_iteration(solver)
        torch_iteration(model, optimizer, inputs, clip)
    samples = {'ours': [], 'torch': []}
    for r in range(rounds):
        for side in (('ours', 'torch') if r % 2 == 0 else ('torch', 'ours')):
            for _ in range(iterations):
                samples[side].append(our_iteration(solver) if side == 'ours'
                                     else torch_iteration(model, optimizer, inputs, clip))
        log(f'    round {r + 1}/{rounds}: ours {1e3 * sum(samples["ours"][-1]):.1f} ms, '
            f'torch {1e3 * sum(samples["torch"][-1]):.1f} ms')
    return samples


def summarize(samples):
    """Median and range (ms) of the total and median of each phase."""
    totals = [sum(s) for s in samples]
    phases = list(zip(*samples))
    return {'ms': 1e3 * statistics.median(totals), 'min_ms': 1e3 * min(totals),
            'max_ms': 1e3 * max(totals),
            'forward_ms': 1e3 * statistics.median(phases[0]),
            'backward_ms': 1e3 * statistics.median(phases[1]),
            'update_ms': 1e3 * statistics.median(phases[2])}


def _timed(call, restore, repeats):
    """Median seconds of ``call()`` over ``repeats``, ``restore()`` untimed before each."""
    times = []
    for _ in range(repeats):
        restore()
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def time_layers(net, rounds, log):
    """Per layer: our and PyTorch's forward and backward medians (ms), each
    on the same bottoms and upstream gradients (those of the last iteration)."""
    import numpy as np
    import torch
    net.forward()
    net.backward()
    rows = []
    for i, layer in enumerate(net.layers):
        if layer.type in UNTIMED:
            continue
        bottom, top = net.bottom_vecs[i], net.top_vecs[i]
        blobs = {id(b): b for b in bottom + top}.values()
        saved = [(b, b.data.copy(), b.diff.copy()) for b in blobs]

        def restore():
            for b, data, diff in saved:
                np.copyto(b.data, data)
                np.copyto(b.diff, diff)

        down = net.bottom_need_backward[i]
        backward = net.layer_need_backward[i]
        fn, params = torch_layer(layer, bottom, top, inplace=False)
        params = [q.requires_grad_(layer.param_propagate_down[k]) for k, q in enumerate(params)]
        xs = [torch.tensor(d).requires_grad_(bool(need) and backward)
              for (b, d, _), need in zip(saved[:len(bottom)], down)]
        # Our bottoms may share a blob (never in the zoo); torch needs one tensor each.
        xs += [torch.tensor(b.data) for b in bottom[len(xs):]]
        mask = torch.tensor(layer.mask) if layer.type == 'Dropout' and layer.phase == 'TRAIN' else None
        wrt = [x for x in xs if x.requires_grad] + [q for q in params if q.requires_grad]
        ys = fn(xs, params, mask)
        dys = [torch.tensor(saved[[id(s[0]) for s in saved].index(id(t))][2]) for t in top]
        torch_backward = backward and wrt and layer.type != 'Split' and ys[0].requires_grad
        sample = {'ours_f': [], 'torch_f': [], 'ours_b': [], 'torch_b': []}
        # Enough repeats per sample for ~20 ms of work, from a first timing.
        once = min(_timed(lambda: layer.forward(bottom, top), restore, 2))
        repeats = max(1, min(50, int(0.02 / max(once, 1e-6))))
        calls = {
            'ours_f': lambda: layer.forward(bottom, top),
            'torch_f': (lambda: fn(xs, params, mask)) if layer.type != 'Split' else None,
            'ours_b': (lambda: layer.backward(top, down, bottom)) if backward else None,
            'torch_b': (lambda: torch.autograd.grad(ys, wrt, dys, retain_graph=True))
            if torch_backward else None,
        }
        for _ in range(rounds):
            for key, call in calls.items():
                if call is not None:
                    sample[key].append(statistics.median(_timed(call, restore, repeats)))
        restore()
        row = {'name': layer.name, 'type': layer.type}
        for key, values in sample.items():
            row[key + '_ms'] = 1e3 * statistics.median(values) if values else None
        rows.append(row)
    net.clear_param_diffs()
    return rows


def gemm_rates(size=2048, repeats=10):
    """Float32 GEMM GFLOP/s (median) of NumPy's and PyTorch's BLAS, alternating."""
    import numpy as np
    import torch
    a = np.random.default_rng(0).standard_normal((size, size), np.float32)
    c = np.empty_like(a)
    ta, tc = torch.from_numpy(a.copy()), torch.empty(size, size)
    times = {'numpy': [], 'torch': []}
    for r in range(repeats + 2):
        t0 = time.perf_counter()
        np.matmul(a, a, out=c)
        t1 = time.perf_counter()
        torch.mm(ta, ta, out=tc)
        t2 = time.perf_counter()
        if r >= 2:
            times['numpy'].append(t1 - t0)
            times['torch'].append(t2 - t1)
    return {k: 2 * size ** 3 / statistics.median(v) / 1e9 for k, v in times.items()}


def worker(args):
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    out = {'threads': args.threads, 'gemm_gflops': gemm_rates(), 'nets': []}
    log(f'[{args.threads} thread(s)] GEMM GFLOP/s: ' +
        ', '.join(f'{k} {v:.1f}' for k, v in out['gemm_gflops'].items()))
    for model_name, batch in selected(args.nets):
        log(f'[{args.threads} thread(s)] {model_name} at batch {batch}')
        solver = build_solver(model_name, batch)
        net = solver.net
        model = torch_model(net)
        optimizer = torch_optimizer(solver, model)
        check = check_same_function(solver, model, args.rtol)
        log('    same function: loss ours {:.6f}, PyTorch {:.6f}, float64 {:.6f}; '.format(
            *check['loss']) + ', '.join(f'{side} gradients within {e:.1e} ({where})'
                                        for side, (e, where) in check['error'].items()))
        samples = time_iterations(solver, model, optimizer, args.rounds, args.iterations,
                                  args.warmup, log)
        result = {'net': model_name, 'batch': batch, 'flops': flops(net),
                  'check': check,
                  'ours': summarize(samples['ours']), 'torch': summarize(samples['torch'])}
        if args.layer_rounds:
            result['layers'] = time_layers(net, args.layer_rounds, log)
        out['nets'].append(result)
        net.close()
        with open(args.worker, 'w') as f:
            json.dump(out, f)


# -- Numba compile time -----------------------------------------------------

def compile_worker(args):
    """Seconds of the first and second iteration of each net, in this process."""
    out = []
    for model_name, batch in selected(args.nets):
        solver = build_solver(model_name, batch)
        first = sum(our_iteration(solver))
        second = sum(our_iteration(solver))
        out.append({'net': model_name, 'first_s': first, 'second_s': second})
        solver.net.close()
    with open(args.compile_worker, 'w') as f:
        json.dump(out, f)


def run_child(flag, args, threads, env_extra=None):
    fd, path = tempfile.mkstemp(suffix='.json')
    os.close(fd)
    from layerasync._threads import thread_settings
    env = dict(os.environ, GLIBC_TUNABLES=ALLOCATOR, **(env_extra or {}), **thread_settings(threads))
    command = [sys.executable, os.path.abspath(__file__), flag, path, '--threads', str(threads),
               '--nets', args.nets, '--rounds', str(args.rounds),
               '--iterations', str(args.iterations), '--warmup', str(args.warmup),
               '--layer-rounds', str(args.layer_rounds), '--rtol', str(args.rtol)]
    try:
        subprocess.run(command, env=env, check=True)
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def selected(names):
    wanted = names.split(',')
    known = dict(NETS)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f'unknown net(s) {unknown}; known: {", ".join(known)}')
    return [(n, known[n]) for n in wanted]


# -- report -------------------------------------------------------------------

def report(results, compile_times, layer_rows):
    lines = ['', '## Per iteration (forward + backward + solver step), median ms [min-max]', '',
             '| net | batch | threads | ours ms | PyTorch ms | ours/PyTorch | ours update ms | '
             'PyTorch step ms | GFLOP/s ours (of NumPy GEMM) | GFLOP/s PyTorch (of its GEMM) |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for res in results:
        gemm = res['gemm_gflops']
        for r in res['nets']:
            o, t = r['ours'], r['torch']
            rate_o, rate_t = r['flops'] / o['ms'] / 1e6, r['flops'] / t['ms'] / 1e6
            lines.append(
                f"| {r['net']} | {r['batch']} | {res['threads']} | {o['ms']:.1f} [{o['min_ms']:.1f}-"
                f"{o['max_ms']:.1f}] | {t['ms']:.1f} [{t['min_ms']:.1f}-{t['max_ms']:.1f}] | "
                f"{o['ms'] / t['ms']:.2f} | {o['update_ms']:.2f} | {t['update_ms']:.2f} | "
                f"{rate_o:.1f} ({rate_o / gemm['numpy']:.0%}) | {rate_t:.1f} ({rate_t / gemm['torch']:.0%}) |")
    lines += ['', '## Float32 GEMM 2048^3, GFLOP/s (median of 10)', '']
    for res in results:
        g = res['gemm_gflops']
        lines.append(f"- {res['threads']} thread(s): NumPy {g['numpy']:.1f}, PyTorch {g['torch']:.1f}")
    lines += ['', '## Forward/backward split, median ms', '',
              '| net | threads | ours fwd | PyTorch fwd | ours bwd | PyTorch bwd |', '|---|---|---|---|---|---|']
    for res in results:
        for r in res['nets']:
            o, t = r['ours'], r['torch']
            lines.append(f"| {r['net']} | {res['threads']} | {o['forward_ms']:.1f} | {t['forward_ms']:.1f} | "
                         f"{o['backward_ms']:.1f} | {t['backward_ms']:.1f} |")
    for res in results:
        for r in res['nets']:
            rows = [row for row in r.get('layers', []) if row['ours_f_ms'] is not None]
            if not rows:
                continue
            lines += ['', f"## Layers of {r['net']}, {res['threads']} thread(s): the "
                      f'{layer_rows} with the most excess time (ours - PyTorch), median ms', '',
                      '| layer | type | ours fwd | PyTorch fwd | ratio | ours bwd | PyTorch bwd | ratio |',
                      '|---|---|---|---|---|---|---|---|']

            def excess(row):
                return sum((row[f'ours_{d}_ms'] or 0) - (row[f'torch_{d}_ms'] or 0) for d in 'fb')

            for row in sorted(rows, key=excess, reverse=True)[:layer_rows]:
                cells = _side_by_side(row, '_ms')
                lines.append(f"| {row['name']} | {row['type']} | {cells} |")
            lines += ['', f"## Layer types of {r['net']}, {res['threads']} thread(s): sums over "
                      'the layers of each type, ms', '',
                      '| type | layers | ours fwd | PyTorch fwd | ratio | ours bwd | PyTorch bwd | '
                      'ratio |', '|---|---|---|---|---|---|---|---|']
            for kind, sums in _by_type(rows):
                lines.append(f"| {kind} | {sums['layers']} | {_side_by_side(sums, '')} |")
    if compile_times:
        lines += ['', '## Numba: first iteration in a fresh process, seconds', '',
                  '| net | empty cache: first | second | cached: first | second |',
                  '|---|---|---|---|---|']
        for cold, warm in zip(*compile_times):
            lines.append(f"| {cold['net']} | {cold['first_s']:.2f} | {cold['second_s']:.3f} | "
                         f"{warm['first_s']:.2f} | {warm['second_s']:.3f} |")
        total = sum(c['first_s'] - c['second_s'] for c in compile_times[0])
        lines.append(f'\nCompilation (first minus second iteration, empty cache), all nets: {total:.1f} s')
    return '\n'.join(lines)


def _by_type(rows):
    """(type, sums) per layer type, the most time of ours first; a sum is None
    where no layer of the type has that measurement (a side with nothing to run)."""
    sums = {}
    for row in rows:
        s = sums.setdefault(row['type'], {'layers': 0})
        s['layers'] += 1
        for key in ('ours_f', 'torch_f', 'ours_b', 'torch_b'):
            value = row[key + '_ms']
            if value is not None:
                s[key] = s.get(key, 0.0) + value
    for s in sums.values():
        for key in ('ours_f', 'torch_f', 'ours_b', 'torch_b'):
            s.setdefault(key, None)
    return sorted(sums.items(), key=lambda item: -((item[1]['ours_f'] or 0) + (item[1]['ours_b'] or 0)))


def _side_by_side(row, suffix):
    """Table cells: ours, PyTorch's and their ratio, for forward then backward
    (``row['ours_f' + suffix]`` ...)."""
    cells = []
    for d in 'fb':
        mine, theirs = row[f'ours_{d}{suffix}'], row[f'torch_{d}{suffix}']
        cells += [_ms(mine), _ms(theirs),
                  f'{mine / theirs:.2f}' if mine is not None and theirs else '-']
    return ' | '.join(cells)


def _ms(value):
    return '-' if value is None else f'{value:.2f}'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--nets', default=','.join(n for n, _ in NETS))
    parser.add_argument('--threads', default='1,2', help='thread counts, one subprocess each')
    parser.add_argument('--rounds', type=int, default=5, help='alternating rounds per net')
    parser.add_argument('--iterations', type=int, default=2, help='iterations per side per round')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--layer-rounds', type=int, default=5,
                        help='alternating rounds per layer in the per-layer timing (0: skip it)')
    parser.add_argument('--layer-rows', type=int, default=8, help='worst layers listed per net')
    parser.add_argument('--rtol', type=float, default=1e-3,
                        help='loss and gradient agreement, relative to the norm')
    parser.add_argument('--no-compile', action='store_true', help='skip the Numba compile timing')
    parser.add_argument('--json', help='write all measurements here')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--compile-worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = int(args.threads)
        return worker(args)
    if args.compile_worker:
        return compile_worker(args)
    compile_times = None
    if not args.no_compile:
        with tempfile.TemporaryDirectory() as cache:
            env = {'NUMBA_CACHE_DIR': cache}
            compile_times = [run_child('--compile-worker', args, 1, env) for _ in range(2)]
    results = [run_child('--worker', args, int(t)) for t in args.threads.split(',')]
    print(report(results, compile_times, args.layer_rows))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'compile': compile_times,
                       'cpu': _cpu_model(), 'command': ' '.join(sys.argv)}, f, indent=1)


def _cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return 'unknown'


if __name__ == '__main__':
    main()
