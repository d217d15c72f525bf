"""InnerProduct, Softmax and the layers that move blobs around:
Split, Flatten, Reshape, Concat, Slice, Eltwise."""
import numpy as np

from ..kernels.blas import gemm
from .base import Layer, canonical_axis, register


@register
class InnerProduct(Layer):
    """top = bottom @ W.T + b over the axes from ``axis`` on.

    W is ``(num_output, K)`` as in Caffe, or ``(K, num_output)`` with
    ``transpose: true``; K is the product of the bottom's axes from ``axis``.
    """
    type = 'InnerProduct'
    param_field = 'inner_product_param'

    def setup(self, bottom, top):
        p = self.param
        self.check(p.num_output is not None and p.num_output > 0,
                   'inner_product_param.num_output must be a positive integer')
        self.axis = canonical_axis(self, p.axis, bottom[0].num_axes)
        self.K = bottom[0].count_range(self.axis)
        self.check(self.K > 0, f'input of shape {bottom[0].shape} has no features from axis {self.axis}')
        shape = (self.K, p.num_output) if p.transpose else (p.num_output, self.K)
        self.blobs = [self.make_param(shape, p.weight_filler)]
        if p.bias_term:
            self.blobs.append(self.make_param((p.num_output,), p.bias_filler))

    def reshape(self, bottom, top):
        k = bottom[0].count_range(self.axis)
        self.check(k == self.K, f'input has {k} features per sample (shape {bottom[0].shape}), '
                                f'but the weights were set up for {self.K}')
        top[0].reshape(bottom[0].shape[:self.axis] + (self.param.num_output,))

    def _weight_nk(self, which):
        w = getattr(self.blobs[0], which)
        return w.T if self.param.transpose else w  # (num_output, K) view

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(-1, self.K)
        y = top[0].data.reshape(x.shape[0], -1)
        np.matmul(x, self._weight_nk('data').T, out=y)
        if self.param.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(-1, self.param.num_output)
        x = bottom[0].data.reshape(-1, self.K)
        if self.param_propagate_down[0]:
            if self.param.transpose:
                gemm(x.T, dy, self.blobs[0].diff, beta=1.0)
            else:
                gemm(dy.T, x, self.blobs[0].diff, beta=1.0)
        if self.param.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            np.matmul(dy, self._weight_nk('data'), out=bottom[0].diff.reshape(-1, self.K))


@register
class Softmax(Layer):
    type = 'Softmax'
    param_field = 'softmax_param'

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, self.param.axis, bottom[0].num_axes)
        top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        softmax(bottom[0].data, self.axis, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y, dy = top[0].data, top[0].diff
            dot = (dy * y).sum(axis=self.axis, keepdims=True)
            np.multiply(dy - dot, y, out=bottom[0].diff)


def softmax(x, axis, out):
    """Numerically stable softmax of ``x`` along ``axis`` into ``out``."""
    np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


@register
class Split(Layer):
    """One blob to several consumers: tops share the bottom's data; diffs are summed."""
    type = 'Split'
    num_top = (1, None)

    def reshape(self, bottom, top):
        for t in top:
            t.share(bottom[0], diff=False)

    def forward(self, bottom, top):
        """Tops already view the bottom's data."""

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            if len(top) == 1:
                np.copyto(dx, top[0].diff)
                return
            np.add(top[0].diff, top[1].diff, out=dx)   # one pass for the usual two
            for t in top[2:]:
                dx += t.diff


class _View(Layer):
    """Layers that only relabel the shape: top shares data and diff with bottom."""

    def new_shape(self, shape):
        raise NotImplementedError

    def reshape(self, bottom, top):
        shape = self.new_shape(bottom[0].shape)
        count = int(np.prod(shape, dtype=np.int64))
        self.check(count == bottom[0].count,
                   f'output shape {shape} has {count} values, the input {bottom[0].shape} '
                   f'has {bottom[0].count}')
        top[0].share(bottom[0], shape)

    def forward(self, bottom, top):
        """Shared memory: nothing to compute."""

    def backward(self, top, propagate_down, bottom):
        """Shared memory: the top's diff already is the bottom's."""


@register
class Flatten(_View):
    """Collapse axes ``axis`` .. ``end_axis`` (inclusive) into one."""
    type = 'Flatten'
    param_field = 'flatten_param'

    def new_shape(self, shape):
        n = len(shape)
        a = canonical_axis(self, self.param.axis, n)
        e = canonical_axis(self, self.param.end_axis, n)
        self.check(a <= e, f'axis {self.param.axis} comes after end_axis {self.param.end_axis}')
        return shape[:a] + (int(np.prod(shape[a:e + 1], dtype=np.int64)),) + shape[e + 1:]


@register
class Reshape(_View):
    """Caffe's Reshape: ``0`` copies a bottom dimension, ``-1`` is inferred;
    ``axis``/``num_axes`` select the range of bottom axes being replaced."""
    type = 'Reshape'
    param_field = 'reshape_param'

    def setup(self, bottom, top):
        dims = list(self.param.shape.dim)
        self.check(dims.count(-1) <= 1, f'shape {dims} has more than one -1')
        self.check(all(d >= -1 for d in dims), f'shape {dims}: dimensions must be >= -1')

    def new_shape(self, shape):
        p, dims, n = self.param, list(self.param.shape.dim), len(shape)
        start = p.axis if p.axis >= 0 else n + 1 + p.axis
        self.check(0 <= start <= n, f'axis {p.axis} out of range for a {n}-d input')
        end = n if p.num_axes == -1 else start + p.num_axes
        self.check(p.num_axes >= -1 and end <= n,
                   f'num_axes {p.num_axes} with axis {p.axis} exceeds the input\'s {n} axes')
        out = []
        for i, d in enumerate(dims):
            if d == 0:
                self.check(start + i < n, f'shape dim {i} is 0 (copy) but the input has no axis {start + i}')
                d = shape[start + i]
            out.append(d)
        new = list(shape[:start]) + out + list(shape[end:])
        if -1 in new:
            known = int(np.prod([d for d in new if d != -1], dtype=np.int64))
            total = int(np.prod(shape, dtype=np.int64))
            self.check(known > 0 and total % known == 0,
                       f'cannot infer -1 in {dims}: {total} values do not divide by {known}')
            new[new.index(-1)] = total // known
        return tuple(new)


def _concat_axis(layer, bottom_shape, legacy):
    p = layer.param
    if p.has(legacy):
        return getattr(p, legacy)
    return canonical_axis(layer, p.axis, len(bottom_shape))


@register
class Concat(Layer):
    type = 'Concat'
    param_field = 'concat_param'
    num_bottom = (1, None)

    def reshape(self, bottom, top):
        axis = self.axis = _concat_axis(self, bottom[0].shape, 'concat_dim')
        first = bottom[0].shape
        for b in bottom[1:]:
            same = len(b.shape) == len(first) and all(
                d == f for k, (d, f) in enumerate(zip(b.shape, first)) if k != axis)
            self.check(same, f"bottom '{b.name}' shape {b.shape} does not match "
                             f"'{bottom[0].name}' shape {first} outside axis {axis}")
        self.sizes = [b.shape[axis] for b in bottom]
        top[0].reshape(first[:axis] + (sum(self.sizes),) + first[axis + 1:])

    def _parts(self, array):
        return np.split(array, np.cumsum(self.sizes)[:-1], axis=self.axis)

    def forward(self, bottom, top):
        if len(bottom) == 1:
            np.copyto(top[0].data, bottom[0].data)
            return
        for part, b in zip(self._parts(top[0].data), bottom):
            np.copyto(part, b.data)

    def backward(self, top, propagate_down, bottom):
        for part, b, down in zip(self._parts(top[0].diff), bottom, propagate_down):
            if down:
                np.copyto(b.diff, part)


@register
class Slice(Layer):
    """Cut the bottom along ``axis`` at ``slice_point``s (or into equal parts)."""
    type = 'Slice'
    param_field = 'slice_param'
    num_top = (1, None)

    def reshape(self, bottom, top):
        axis = self.axis = _concat_axis(self, bottom[0].shape, 'slice_dim')
        size = bottom[0].shape[axis]
        points = list(self.param.slice_point)
        if points:
            self.check(len(points) == len(top) - 1,
                       f'{len(points)} slice_points for {len(top)} tops; need {len(top) - 1}')
            bounds = [0] + points + [size]
            self.check(all(a < b for a, b in zip(bounds, bounds[1:])),
                       f'slice_points {points} must increase strictly inside (0, {size})')
        else:
            self.check(size % len(top) == 0,
                       f'axis {axis} of size {size} does not split into {len(top)} equal parts')
            bounds = [size // len(top) * k for k in range(len(top) + 1)]
        self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        shape = bottom[0].shape
        for t, s in zip(top, self.sizes):
            t.reshape(shape[:axis] + (s,) + shape[axis + 1:])

    def _parts(self, array):
        return np.split(array, np.cumsum(self.sizes)[:-1], axis=self.axis)

    def forward(self, bottom, top):
        for part, t in zip(self._parts(bottom[0].data), top):
            np.copyto(t.data, part)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            for part, t in zip(self._parts(bottom[0].diff), top):
                np.copyto(part, t.diff)


@register
class Eltwise(Layer):
    """Element-wise SUM (with ``coeff``), PROD or MAX of equally shaped bottoms."""
    type = 'Eltwise'
    param_field = 'eltwise_param'
    num_bottom = (2, None)

    def setup(self, bottom, top):
        p = self.param
        self.op = p.operation
        self.check(not p.coeff or self.op == 'SUM', 'coeff is only for operation SUM')
        self.check(not p.coeff or len(p.coeff) == len(bottom),
                   f'{len(p.coeff)} coeff values for {len(bottom)} bottoms')
        self.coeff = list(p.coeff) or [1.0] * len(bottom)

    def reshape(self, bottom, top):
        for b in bottom[1:]:
            self.check(b.shape == bottom[0].shape,
                       f"bottom '{b.name}' has shape {b.shape}, but '{bottom[0].name}' has "
                       f'{bottom[0].shape}; Eltwise needs equal shapes')
        top[0].reshape_like(bottom[0])
        if self.op == 'MAX':
            self.argmax = np.empty(bottom[0].shape, np.int32)

    def forward(self, bottom, top):
        y = top[0].data
        if self.op == 'SUM':
            if self.coeff[0] == 1.0 and self.coeff[1] == 1.0:   # a residual: one pass
                np.add(bottom[0].data, bottom[1].data, out=y)
                rest = 2
            else:
                np.multiply(bottom[0].data, self.coeff[0], out=y)
                rest = 1
            for c, b in zip(self.coeff[rest:], bottom[rest:]):
                y += c * b.data if c != 1.0 else b.data
        elif self.op == 'PROD':
            np.multiply(bottom[0].data, bottom[1].data, out=y)
            for b in bottom[2:]:
                y *= b.data
        else:
            # Caffe's tie rule: between the first two, ties go to bottom 1;
            # later bottoms must be strictly greater to win.
            a, b = bottom[0].data, bottom[1].data
            first = a > b
            np.copyto(self.argmax, np.where(first, 0, 1))
            np.maximum(a, b, out=y)
            for k, blob in enumerate(bottom[2:], start=2):
                wins = blob.data > y
                self.argmax[wins] = k
                np.copyto(y, blob.data, where=wins)

    def backward(self, top, propagate_down, bottom):
        dy, y = top[0].diff, top[0].data
        for k, (b, down) in enumerate(zip(bottom, propagate_down)):
            if not down:
                continue
            if self.op == 'SUM':
                if self.coeff[k] == 1.0:
                    np.copyto(b.diff, dy)
                else:
                    np.multiply(dy, self.coeff[k], out=b.diff)
            elif self.op == 'PROD':
                if self.param.stable_prod_grad:
                    others = [o.data for j, o in enumerate(bottom) if j != k]
                    np.multiply(dy, others[0], out=b.diff)
                    for o in others[1:]:
                        b.diff *= o
                else:
                    np.multiply(dy, y / b.data, out=b.diff)
            else:
                np.multiply(dy, self.argmax == k, out=b.diff)
