"""The layer contract, the type registry and the weight fillers.

A layer is Caffe's four methods over lists of Blobs:

- ``setup(bottom, top)``: read the layer's parameters, create ``self.blobs``
  (the learnable parameters) and check what does not depend on shapes;
- ``reshape(bottom, top)``: check the bottom shapes and shape the tops (and
  any workspace); called before every forward, cheap when nothing changed;
- ``forward(bottom, top)``: compute ``top[i].data`` from ``bottom[j].data``;
- ``backward(top, propagate_down, bottom)``: given ``top[i].diff``, write
  ``bottom[j].diff`` where ``propagate_down[j]`` is true (overwrite: the net
  inserts a Split wherever a blob has several consumers), and *add* the
  parameter gradients to ``self.blobs[k].diff`` where
  ``self.param_propagate_down[k]`` is true (accumulation makes ``iter_size``
  work; the solver clears the gradients once per step).

Blobs are ``(N, C, H, W)`` for images and ``(N, D)`` for features unless a
layer says otherwise. A top may be the same Blob as a bottom (in-place) for
layers with ``inplace = True``.

Layers must raise ``LayerError`` (through ``self.error``) for bad parameters or
shapes, so the message names the layer, its type and its prototxt line.

Randomness: ``self.rng`` (seeded from the net's seed, the same on every rank)
is for the weight fillers only. Noise drawn per sample during forward
(dropout) is keyed by the samples' stream positions, read from
``self.batch`` (a ``BatchContext``, shared by the net's layers), so that it
does not depend on how a global batch is split between ranks.
"""
import math

import numpy as np

from ..data.sampler import BatchContext

__all__ = ['Layer', 'LayerError', 'NetError', 'register', 'LAYERS', 'fill', 'canonical_axis']

LAYERS = {}


class NetError(ValueError):
    """A net that cannot be built or run as written."""


class LayerError(NetError):
    """A layer's parameters or input shapes are wrong."""


def register(cls):
    """Class decorator: make ``cls`` available under its Caffe ``type`` name."""
    if cls.type in LAYERS:
        raise ValueError(f'layer type {cls.type!r} registered twice')
    LAYERS[cls.type] = cls
    return cls


class Layer:
    type = None          # Caffe's type string, e.g. 'Convolution'
    param_field = None   # the LayerParameter field with this type's settings
    num_bottom = (1, 1)  # (min, max) bottoms; max None: any number
    num_top = (1, 1)
    inplace = False      # may top[0] be bottom[0]?
    is_loss = False      # default loss_weight 1 on top 0, as Caffe's LossLayer

    def __init__(self, spec, phase='TRAIN', dtype=np.float32, rng=None):
        self.spec = spec
        self.name = spec.name
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.param = getattr(spec, self.param_field) if self.param_field else None
        self.blobs = []
        self.param_propagate_down = []
        self.data_options = None  # set by the Net: rank shard and data settings
        # Replaced by the Net's own: the stream positions of the current batch.
        self.batch = BatchContext()
        # Set by the Net (``set_progress``): long layers call it between chunks
        # of their work, so that in-flight communication is not starved when
        # MPI only progresses inside MPI calls. None: nothing to call.
        self.progress = None

    # -- the contract -------------------------------------------------------
    def setup(self, bottom, top):
        """Read parameters, create ``self.blobs``. Called once."""

    def reshape(self, bottom, top):
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        """Default: a layer without gradients (data, accuracy)."""

    def allow_force_backward(self, bottom_index):
        """False for inputs that have no gradient (labels)."""
        return True

    # -- helpers --------------------------------------------------------------
    def error(self, message):
        return LayerError(f"{self.spec.where}: layer '{self.name}' ({self.type}): {message}")

    def check(self, condition, message):
        if not condition:
            raise self.error(message)

    def make_param(self, shape, filler):
        """A new parameter Blob of ``shape`` filled by ``filler`` (a FillerParameter)."""
        from ..blob import Blob
        self.check(all(d > 0 for d in shape), f'parameter shape {tuple(shape)} must be positive')
        blob = Blob(shape, self.dtype, name=f'{self.name}[{len(self.blobs)}]')
        fill(blob.data, filler, self.rng, where=f"layer '{self.name}'")
        return blob

    def __repr__(self):
        return f'<{self.type} {self.name!r}>'


def canonical_axis(layer, axis, num_axes):
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    layer.check(-num_axes <= axis < max(num_axes, 1),
                f'axis {axis} out of range for a {num_axes}-d blob')
    return axis % num_axes if num_axes else 0


def fill(array, filler, rng, where=''):
    """Fill ``array`` in place as Caffe's filler ``filler.type`` does.

    fan_in = count / shape[0] and fan_out = count / shape[1], as in Caffe.
    """
    kind = filler.type
    shape = array.shape
    count = array.size
    fan_in = count / shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    n = {'FAN_IN': fan_in, 'FAN_OUT': fan_out,
         'AVERAGE': (fan_in + fan_out) / 2}[filler.variance_norm]
    if kind == 'constant':
        array[...] = filler.value
    elif kind == 'uniform':
        if filler.max < filler.min:
            raise NetError(f'{filler.where}: {where}: uniform filler needs min <= max')
        array[...] = rng.uniform(filler.min, filler.max, shape)
    elif kind == 'gaussian':
        array[...] = rng.normal(filler.mean, filler.std, shape)
        if filler.sparse >= 0:
            # Caffe keeps each weight with probability sparse / num_outputs.
            keep = min(1.0, filler.sparse / shape[0])
            array *= rng.random(shape) < keep
    elif kind == 'xavier':
        scale = math.sqrt(3.0 / n)
        array[...] = rng.uniform(-scale, scale, shape)
    elif kind == 'msra':
        array[...] = rng.normal(0.0, math.sqrt(2.0 / n), shape)
    else:
        raise NetError(f"{filler.where}: {where}: unknown filler type '{kind}'; "
                       'known: constant, uniform, gaussian, xavier, msra')
