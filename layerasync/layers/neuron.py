"""Element-wise layers: ReLU, Sigmoid, TanH, Dropout. All may run in place."""
import numpy as np

from ..kernels import neuron as K
from ..kernels import random as R
from .base import Layer, register


class _Neuron(Layer):
    inplace = True

    def reshape(self, bottom, top):
        top[0].reshape_like(bottom[0])


def _flat(a):
    return a.reshape(-1)


@register
class ReLU(_Neuron):
    """y = max(x, 0) + negative_slope * min(x, 0)."""
    type = 'ReLU'
    param_field = 'relu_param'

    def forward(self, bottom, top):
        K.relu_forward(_flat(bottom[0].data), self.param.negative_slope, _flat(top[0].data))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            # In place, bottom data was overwritten by the top: same sign, same gradient.
            K.relu_backward(_flat(bottom[0].data), _flat(top[0].diff),
                            self.param.negative_slope, _flat(bottom[0].diff))


@register
class Sigmoid(_Neuron):
    type = 'Sigmoid'
    param_field = 'sigmoid_param'

    def forward(self, bottom, top):
        K.sigmoid_forward(_flat(bottom[0].data), _flat(top[0].data))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            K.sigmoid_backward(_flat(top[0].data), _flat(top[0].diff), _flat(bottom[0].diff))


@register
class TanH(_Neuron):
    type = 'TanH'
    param_field = 'tanh_param'

    def forward(self, bottom, top):
        np.tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            K.tanh_backward(_flat(top[0].data), _flat(top[0].diff), _flat(bottom[0].diff))


@register
class Dropout(_Neuron):
    """Caffe's dropout: in TRAIN keep each unit with probability 1 - ratio and
    scale kept units by 1 / (1 - ratio) (``scale_train``); in TEST pass through
    (or, with ``scale_train: false``, scale by 1 - ratio).

    Axis 0 of the bottom is the batch. The mask of a sample is a pure function
    of (seed, layer name, the sample's stream position, element index) — see
    ``BatchContext`` and ``kernels.random`` — so P ranks at batch B draw
    exactly the masks one process draws at batch P * B, ranks draw different
    masks, and resuming needs no random state. Backward reuses the mask of
    the last forward.
    """
    type = 'Dropout'
    param_field = 'dropout_param'

    def setup(self, bottom, top):
        ratio = self.param.dropout_ratio
        self.check(0.0 <= ratio < 1.0, f'dropout_ratio must be in [0, 1), got {ratio}')
        self.ratio = ratio
        self.scale = 1.0 / (1.0 - ratio) if self.param.scale_train else 1.0
        # Dropped when a draw's top 32 bits fall below ratio * 2**32.
        self.threshold = np.uint64(round(ratio * 2 ** 32))
        self.key = self.batch.key(self.name)
        self.mask = np.empty(0, self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self.mask.size != bottom[0].count:
            self.mask = np.empty(bottom[0].count, self.dtype)

    def forward(self, bottom, top):
        x, y = _flat(bottom[0].data), _flat(top[0].data)
        if self.phase == 'TRAIN':
            n = bottom[0].shape[0] if bottom[0].shape else 1
            first = self.batch.first_position(self, n)
            R.dropout_forward(x.reshape(n, -1), self.key, first, self.threshold, self.scale,
                              self.mask.reshape(n, -1), y.reshape(n, -1))
        elif self.param.scale_train:
            if top[0] is not bottom[0]:
                y[...] = x
        else:
            np.multiply(x, 1.0 - self.ratio, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = _flat(top[0].diff), _flat(bottom[0].diff)
        if self.phase == 'TRAIN':
            np.multiply(dy, self.mask, out=dx)
        elif self.param.scale_train:
            if top[0] is not bottom[0]:
                dx[...] = dy
        else:
            np.multiply(dy, 1.0 - self.ratio, out=dx)
