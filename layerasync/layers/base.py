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

Memory: ``self.memory`` (the Net's ``memory.Budget``; None for a layer built
alone) must be told of every large allocation before it happens:
``make_param`` reserves the parameter blobs; a layer that allocates more in
``setup`` than its tops and attribute arrays (the Net counts those after
setup) reserves it itself (the Data layer: its prefetch buffers and data set).

Randomness: ``self.rng`` (seeded from the net's seed, the same on every rank)
is for the weight fillers only. Noise drawn per sample during forward
(dropout) is keyed by the samples' stream positions, read from
``self.batch`` (a ``BatchContext``, shared by the net's layers), so that it
does not depend on how a global batch is split between ranks.
"""
import math

import numpy as np

from ..data.sampler import BatchContext

__all__ = ['Layer', 'LayerError', 'NetError', 'register', 'LAYERS', 'fill', 'canonical_axis',
           'check_num_axes', 'param_axes', 'broadcast_dims']

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
        self.memory = None        # set by the Net: its memory.Budget
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

    def reserve(self, what, nbytes):
        """Reserve ``nbytes`` for ``what`` in ``self.memory`` before allocating them."""
        if self.memory is not None:
            self.memory.reserve(self._owner(), what, nbytes, self.spec.where)

    def hold(self, arrays):
        """Count ``arrays`` (allocated in setup) in ``self.memory``, each buffer once."""
        if self.memory is not None:
            self.memory.hold(self._owner(), arrays, self.spec.where)

    def _owner(self):
        return f"layer '{self.name}' ({self.type})"

    def make_param(self, shape, filler):
        """A new parameter Blob of ``shape`` filled by ``filler`` (a FillerParameter),
        reserved in ``self.memory`` (``param_sets`` copies) before it is allocated."""
        from ..blob import Blob
        shape = tuple(shape)
        self.check(all(d > 0 for d in shape), f'parameter shape {shape} must be positive')
        check_filler(filler, shape, f"layer '{self.name}' ({self.type})")
        if self.memory is not None:
            sets = self.memory.param_sets
            self.reserve(f'parameter blob {len(self.blobs)} of shape {shape} ({sets} copies: values, '
                         f'gradients{", solver state" if sets > 2 else ""})',
                         math.prod(shape) * self.dtype.itemsize * sets)
        blob = Blob(shape, self.dtype, name=f'{self.name}[{len(self.blobs)}]')
        fill(blob.data, filler, self.rng)
        return blob

    def __repr__(self):
        return f'<{self.type} {self.name!r}>'


def canonical_axis(layer, axis, num_axes):
    """Caffe's CanonicalAxisIndex: negative axes count from the end."""
    layer.check(-num_axes <= axis < max(num_axes, 1),
                f'axis {axis} out of range for a {num_axes}-d blob')
    return axis % num_axes if num_axes else 0


def check_num_axes(layer, num_axes):
    layer.check(num_axes >= -1, f'num_axes must be -1 (all remaining axes) or >= 0, '
                                f'got {num_axes}')


def param_axes(layer, bottom, axis, num_axes):
    """The shape of a parameter over ``bottom``'s axes ``axis .. axis + num_axes - 1``
    (``num_axes`` -1: all remaining axes; 0: a scalar), as Caffe's Scale and Bias
    layers read ``axis`` and ``num_axes``."""
    check_num_axes(layer, num_axes)
    n = bottom.num_axes
    start = canonical_axis(layer, axis, n)
    end = n if num_axes == -1 else start + num_axes
    layer.check(end <= n, f'axis {axis} with num_axes {num_axes} extends past the '
                          f"{n} axes of bottom '{bottom.name}' {bottom.shape}")
    return bottom.shape[start:end]


def broadcast_dims(layer, what, param, bottom, axis):
    """``bottom`` as (outer, param.count, inner) around the parameter blob ``param``
    (``what``: its name in errors) placed at ``axis``; a scalar applies at axis 0,
    whatever ``axis`` says, as in Caffe."""
    shape, k = bottom.shape, param.num_axes
    start = 0 if k == 0 else canonical_axis(layer, axis, len(shape))
    layer.check(shape[start:start + k] == param.shape,
                f"{what} of shape {param.shape} does not match bottom '{bottom.name}' "
                f'shape {shape} from axis {start}')
    return (bottom.count_range(0, start), param.count, bottom.count_range(start + k))


FILLERS = ('constant', 'uniform', 'gaussian', 'xavier', 'msra')


def check_filler(filler, shape, who):
    """Refuse a FillerParameter that cannot fill a blob of ``shape``: a
    ``LayerError`` at the field's location, naming ``who`` (the layer)."""
    def refuse(field, message):
        raise LayerError(f'{filler.where_of(field)}: {who}: {filler.type} filler: {message}')

    if filler.type not in FILLERS:
        refuse('type', f"unknown filler type '{filler.type}'; known: {', '.join(FILLERS)}")
    for field in ('value', 'min', 'max', 'mean', 'std'):
        if not math.isfinite(getattr(filler, field)):
            refuse(field, f'{field} is {getattr(filler, field)}; it must be a finite number')
    if filler.type == 'uniform' and filler.max < filler.min:
        refuse('max', f'max {filler.max:g} is below min {filler.min:g}; uniform needs min <= max')
    if filler.type == 'gaussian':
        if filler.std < 0:
            refuse('std', f'std is {filler.std:g}; it must be >= 0')
        outputs = shape[0] if shape else 0
        if not (filler.sparse == -1 or 0 <= filler.sparse <= outputs):
            refuse('sparse', f'sparse is {filler.sparse}; it must be -1 (dense) or, for a blob '
                             f'of shape {shape}, in [0, {outputs}] (axis 0)')


# Fillers draw this many values at a time along axis 0: the float64 draws
# then cost a bounded workspace whatever the blob's size, and the values are
# those of one draw over the whole blob.
_FILL_CHUNK = 1 << 20


def _chunks(array):
    """``array`` as views of whole rows along axis 0, about ``_FILL_CHUNK`` values each."""
    if array.ndim == 0:
        yield array
        return
    rows = max(1, _FILL_CHUNK // max(1, array[0].size))
    for start in range(0, len(array), rows):
        yield array[start:start + rows]


def fill(array, filler, rng):
    """Fill ``array`` in place as Caffe's filler ``filler.type`` does
    (``check_filler`` has accepted ``filler`` for this shape).

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
        return
    if kind in ('uniform', 'xavier'):
        bound = math.sqrt(3.0 / n)
        low, high = (filler.min, filler.max) if kind == 'uniform' else (-bound, bound)
        def draw(size):
            return rng.uniform(low, high, size)
    else:
        mean, std = (filler.mean, filler.std) if kind == 'gaussian' else (0.0, math.sqrt(2.0 / n))
        def draw(size):
            return rng.normal(mean, std, size)
    for part in _chunks(array):
        part[...] = draw(part.shape)
    if kind == 'gaussian' and filler.sparse >= 0:
        # Caffe keeps each weight with probability sparse / num_outputs.
        for part in _chunks(array):
            part *= rng.random(part.shape) < filler.sparse / shape[0]
