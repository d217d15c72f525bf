"""BatchNorm and Scale (Caffe splits batch normalisation into these two).

In place, the layers pass the kernels ``out=None`` rather than the input
itself: see ``kernels/batchnorm.py`` for why.
"""
import numpy as np

from .. import schema
from ..kernels import batchnorm as K
from ..proto import Message
from .base import Layer, broadcast_dims, check_num_axes, param_axes, register

_STATS = ('running mean sum', 'running variance sum', 'running weight')


def _by_channel(array, channels):
    """``array`` ``(N, C, ...)`` viewed as ``(N, C, S)``; a 1-d array is one channel."""
    return array.reshape(array.shape[0], channels, -1)


@register
class BatchNorm(Layer):
    """Normalise each channel to zero mean and unit variance, as Caffe's BatchNorm.

    bottom, top: ``(N, C, ...)``, channels on axis 1 (a 1-d bottom is one
    channel); statistics run over all other axes, m = count / C values.
    With batch statistics (``use_global_stats: false``, the TRAIN default)
    the top is ``(x - mean) / sqrt(var + eps)`` with the batch's biased
    variance, and each forward updates Caffe's three blobs, which are not
    learned (their ``param { lr_mult }`` must be 0 and is set to 0 if absent):

    - ``blobs[0]`` ``(C,)``, running mean sum: ``maf * sum + mean``;
    - ``blobs[1]`` ``(C,)``, running variance sum: ``maf * sum + m / (m - 1) * var``;
    - ``blobs[2]`` ``(1,)``, their weight s: ``maf * s + 1``.

    With global statistics (the TEST default) mean and var are ``sum / s``
    (0 while s is 0). There is no affine part: a Scale layer follows.
    """
    type = 'BatchNorm'
    param_field = 'batch_norm_param'
    inplace = True

    def setup(self, bottom, top):
        p = self.param
        self.use_global_stats = (self.phase == 'TEST' if p.use_global_stats is None
                                 else p.use_global_stats)
        self.check(bottom[0].num_axes >= 1, 'needs a bottom with at least one axis')
        self.check(p.eps > 0, f'batch_norm_param.eps must be positive, got {p.eps:g}')
        self.check(0 <= p.moving_average_fraction <= 1, 'batch_norm_param.moving_average_fraction '
                   f'must be in [0, 1], got {p.moving_average_fraction:g}')
        self.channels = bottom[0].shape[1] if bottom[0].num_axes > 1 else 1
        zero = Message(schema.FillerParameter, self.spec.where)
        self.blobs = [self.make_param(shape, zero) for shape in
                      [(self.channels,), (self.channels,), (1,)]]
        self._fix_statistics()
        self.mean = np.zeros(self.channels)      # float64, as the kernels sum
        self.var = np.zeros(self.channels)
        self.inv_std = np.zeros(self.channels)
        self.x_norm = np.empty(0, self.dtype)

    def _fix_statistics(self):
        """Caffe's masking of the statistics from the solver: lr_mult 0 for each blob."""
        specs = list(self.spec.param)
        for k, spec in enumerate(specs[:len(self.blobs)]):
            self.check(spec.lr_mult == 0,
                       f'param {{ lr_mult: {spec.lr_mult:g} }} for blob {k} ({_STATS[k]}): '
                       'batch statistics are not learned; give lr_mult: 0 or leave out the '
                       'param { } entries')
        fixed = Message(schema.ParamSpec, self.spec.where, {'lr_mult': 0.0})
        self.spec.param = specs + [fixed.copy() for _ in range(len(specs), len(self.blobs))]

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        channels = shape[1] if len(shape) > 1 else 1
        self.check(channels == self.channels,
                   f"bottom '{bottom[0].name}' of shape {shape} has {channels} channels, "
                   f'the layer was set up for {self.channels}')
        top[0].reshape(shape)
        if not self.use_global_stats and self.x_norm.shape != shape:
            self.x_norm = np.empty(shape, self.dtype)

    def forward(self, bottom, top):
        x = _by_channel(bottom[0].data, self.channels)
        if self.use_global_stats:
            s = float(self.blobs[2].data[0])
            factor = 0.0 if s == 0 else 1.0 / s
            np.multiply(self.blobs[0].data, factor, out=self.mean, dtype=np.float64)
            np.multiply(self.blobs[1].data, factor, out=self.var, dtype=np.float64)
        else:
            K.batchnorm_stats(x, self.mean, self.var)
            self._update_statistics(x.size // self.channels)
        np.add(self.var, self.param.eps, out=self.inv_std)
        np.sqrt(self.inv_std, out=self.inv_std)
        np.reciprocal(self.inv_std, out=self.inv_std)
        # Caffe keeps x_norm because later in-place layers (Scale, ReLU) overwrite the top.
        x_norm = None if self.use_global_stats else _by_channel(self.x_norm, self.channels)
        y = None if top[0] is bottom[0] else _by_channel(top[0].data, self.channels)
        K.batchnorm_forward(x, self.mean, self.inv_std, y, x_norm)

    def _update_statistics(self, m):
        maf = self.param.moving_average_fraction
        mean_sum, var_sum, weight = (b.data for b in self.blobs)
        weight *= maf
        weight += 1
        mean_sum *= maf
        mean_sum += self.mean
        var_sum *= maf
        var_sum += self.var * (m / (m - 1) if m > 1 else 1.0)

    def backward(self, top, propagate_down, bottom):
        """The statistics' blobs get no gradient: their diffs stay as they are (zero)."""
        if not propagate_down[0]:
            return
        dy = _by_channel(top[0].diff, self.channels)
        dx = None if top[0] is bottom[0] else _by_channel(bottom[0].diff, self.channels)
        if self.use_global_stats:
            K.scale_forward(dy, self.inv_std, None, dx)
        else:
            K.batchnorm_backward(_by_channel(self.x_norm, self.channels), dy, self.inv_std, dx)


@register
class Scale(Layer):
    """``top = bottom[0] * scale (+ bias)``, as Caffe's Scale.

    ``scale`` has the shape of bottom[0]'s axes ``axis .. axis + num_axes - 1``
    (``num_axes: -1``: all remaining axes; 0: a scalar) and is broadcast over
    the others. It is ``blobs[0]`` (filler default: constant 1), or bottom[1]
    when given, which then receives a gradient (overwritten). With
    ``bias_term`` a learned ``bias`` of the same shape (filler default:
    constant 0) is added; it is the last blob. May run in place.
    """
    type = 'Scale'
    param_field = 'scale_param'
    num_bottom = (1, 2)
    inplace = True

    def setup(self, bottom, top):
        p = self.param
        check_num_axes(self, p.num_axes)
        if len(bottom) == 1:
            shape = param_axes(self, bottom[0], p.axis, p.num_axes)
            filler = (p.filler if p.has('filler') else
                      Message(schema.FillerParameter, self.spec.where, {'value': 1.0}))
            self.blobs = [self.make_param(shape, filler)]
        else:
            shape = bottom[1].shape
        if p.bias_term:
            self.blobs.append(self.make_param(shape, p.bias_filler))
        self.scale_diff = self.bias_diff = np.zeros(0)
        self.bottom_copy = np.empty(0, self.dtype)

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        scale, shape = self._scale(bottom), bottom[0].shape
        self.dims = broadcast_dims(self, 'scale', scale, bottom[0], self.param.axis)
        if top[0] is bottom[0]:
            # In place the input is overwritten, but the scale gradient needs it.
            if self.bottom_copy.shape != shape:
                self.bottom_copy = np.empty(shape, self.dtype)
        else:
            top[0].reshape(shape)
        if self.scale_diff.size != scale.count:
            self.scale_diff = np.zeros(scale.count)      # float64, as the kernels sum
            self.bias_diff = np.zeros(scale.count)

    def forward(self, bottom, top):
        x = bottom[0].data
        if top[0] is bottom[0]:
            np.copyto(self.bottom_copy, x)
        bias = self.blobs[-1].data.reshape(-1) if self.param.bias_term else None
        y = None if top[0] is bottom[0] else top[0].data.reshape(self.dims)
        K.scale_forward(x.reshape(self.dims), self._scale(bottom).data.reshape(-1), bias, y)

    def backward(self, top, propagate_down, bottom):
        two = len(bottom) > 1
        want_scale = propagate_down[1] if two else self.param_propagate_down[0]
        want_bias = self.param.bias_term and self.param_propagate_down[-1]
        if not (want_scale or want_bias or propagate_down[0]):
            return
        inplace = top[0] is bottom[0]
        x = self.bottom_copy if inplace else bottom[0].data
        scale = self._scale(bottom)
        K.scale_backward(top[0].diff.reshape(self.dims),
                         x.reshape(self.dims) if want_scale else None,
                         scale.data.reshape(-1) if propagate_down[0] else None,
                         self.scale_diff if want_scale else None,
                         self.bias_diff if want_bias else None,
                         None if inplace else bottom[0].diff.reshape(self.dims))
        if want_scale:
            diff = scale.diff.reshape(-1)
            if two:
                diff[...] = self.scale_diff
            else:
                diff += self.scale_diff
        if want_bias:
            diff = self.blobs[-1].diff.reshape(-1)
            diff += self.bias_diff
