"""Net: a DAG of layers over named blobs, built from a Caffe NetParameter.

Building follows Caffe's ``Net::Init``: take the layer list that ``graph``
derives from the file (phase rules, legacy inputs, splits), set every layer
up in order (shape inference), then work out which layers and blobs need a
backward pass. Finally the parameters are moved into the two arenas (values and
gradients), ordered by backward readiness: the last layer's parameters first.

``forward(before_layer=f)`` calls ``f(i)`` before layer ``i`` runs and
``backward(after_layer=g)`` calls ``g(i)`` as soon as layer ``i``'s gradients
are complete: the seams where communication strategies plug in.
"""
from collections import OrderedDict

import numpy as np

from . import proto, schema
from .blob import Arena, Blob
from .data.sampler import BatchContext
from .graph import layer_specs
from .layers import LAYERS, NetError
from .memory import Budget, held_by
from .proto import Message

__all__ = ['Net', 'TRAIN', 'TEST', 'load_net_param', 'set_batch_size', 'remove_layers']

TRAIN, TEST = 'TRAIN', 'TEST'


def load_net_param(source):
    """A NetParameter from a path, prototxt text or a Message (see ``proto.load``)."""
    return proto.load(source, schema.NetParameter)


def set_batch_size(param, batch):
    """Give every Data and Input layer of a NetParameter the batch size ``batch`` (in place)."""
    for layer in param.layer:
        if layer.type == 'Data':
            layer.data_param.batch_size = batch
        elif layer.type == 'Input':
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    for shape in param.input_shape:
        shape.dim[0] = batch
    return param


def remove_layers(param, types):
    """Drop every layer whose type is in ``types`` from a NetParameter (in place),
    wiring its consumers to its input: a variant of a net without, say, its
    LRN layers (``remove_layers(param, {'LRN'})``). Each removed layer must
    have one bottom and one top and keep the shape (a normalisation, an
    activation, dropout); ValueError naming the layer otherwise, or when no
    layer has one of the types."""
    types, kept, renamed, removed = set(types), [], {}, 0
    for layer in param.layer:
        if layer.type not in types:
            bottoms = list(layer.bottom)
            layer.bottom = [renamed.get(b, b) for b in bottoms]
            # An in-place top follows its bottom; a new blob of a removed name shadows it.
            layer.top = [renamed.get(t, t) if t in bottoms else t for t in layer.top]
            for t in layer.top:
                if t not in bottoms:
                    renamed.pop(t, None)
            kept.append(layer)
            continue
        if len(layer.bottom) != 1 or len(layer.top) != 1:
            raise ValueError(f"{layer.where}: layer '{layer.name}' ({layer.type}) has "
                             f'{len(layer.bottom)} bottoms and {len(layer.top)} tops; only a '
                             'layer with one of each can be removed')
        bottom = renamed.get(layer.bottom[0], layer.bottom[0])
        renamed[layer.top[0]] = bottom
        removed += 1
    if not removed:
        raise ValueError(f"{param.where}: no layer of type {', '.join(sorted(types))} to remove; "
                         f"the net has {', '.join(sorted({l.type for l in param.layer}))}")
    param.layer = kept
    return param


class Net:
    """A network built from a prototxt, with pycaffe's interface.

    ``Net(path_or_text, phase=TRAIN, dtype=np.float32, seed=0)``; ``phase``
    may also be given as pycaffe's positional second argument. ``seed`` fixes
    the weight fillers (``layer.rng``, the same on every rank) and the keys of
    the per-sample draws (dropout masks). ``data`` (a
    ``layerasync.data.DataOptions``: rank shard, synthetic data, ...) is
    handed to every layer as ``layer.data_options`` before its setup, and
    ``batch`` (a ``BatchContext``: the stream positions of the samples of the
    current forward pass, published by the Data and Input layers) as
    ``layer.batch``. ``memory`` (a ``memory.Budget``; default: a new one,
    limited by the available memory) is charged with every layer's parameters,
    blobs and workspaces as the layers are set up, so that a net too large for
    the machine is refused (``MemoryLimitError``) before it is allocated; a
    ``MemoryError`` during setup becomes a ``LayerError`` naming the layer.
    """

    def __init__(self, source, phase=TRAIN, dtype=np.float32, seed=0, stages=(), level=0,
                 data=None, memory=None):
        if phase not in (TRAIN, TEST):
            raise ValueError(f'phase must be layerasync.TRAIN or layerasync.TEST, not {phase!r}')
        param = load_net_param(source)
        self.param, self.phase, self.dtype = param, phase, np.dtype(dtype)
        self.name = param.name
        self.data_options = data
        self.memory = memory if memory is not None else Budget()
        # As in pycaffe, the phase argument wins over the file's ``state { phase }``.
        state = Message(schema.NetState, param.where,
                        {'phase': phase, 'level': level, 'stage': list(stages) + list(param.state.stage)})
        specs = layer_specs(param, state)

        self.layers, self.blobs = [], OrderedDict()
        self.bottom_vecs, self.top_vecs, self.bottom_names, self.top_names = [], [], [], []
        self.batch = BatchContext(seed)
        seq = np.random.SeedSequence(seed)
        for i, (spec, child) in enumerate(zip(specs, seq.spawn(len(specs)))):
            layer = LAYERS[spec.type](spec, phase, self.dtype, np.random.default_rng(child))
            layer.data_options, layer.batch, layer.memory = data, self.batch, self.memory
            self._connect(layer, spec)
            self.layers.append(layer)
            try:
                layer.setup(self.bottom_vecs[i], self.top_vecs[i])
                layer.param_propagate_down = [True] * len(layer.blobs)
                layer.reshape(self.bottom_vecs[i], self.top_vecs[i])
            except MemoryError:
                raise layer.error(f'out of memory while setting it up (reserved so far: '
                                  f'{self.memory.describe()})') from None
            layer.hold(held_by(layer, self.top_vecs[i]))
        try:
            self._collect_params()
        except MemoryError:
            raise NetError(f"{param.where}: net '{self.name}': out of memory while gathering "
                           f'the parameters into their arenas (reserved: '
                           f'{self.memory.describe()})') from None
        self._set_loss_weights()
        self._plan_backward(param.force_backward)
        consumed = {n for names in self.bottom_names for n in names}
        self.outputs = [n for n in self.blobs if n not in consumed]
        self.inputs = [n for layer, tops in zip(self.layers, self.top_names)
                       if layer.type == 'Input' for n in tops]
        self._bottom_shapes = [tuple(b.shape for b in bottom) for bottom in self.bottom_vecs]
        self._loss_tops = [(i, blob, w) for i, tops in enumerate(self.top_vecs)
                           for blob, w in zip(tops, self.loss_weights[i]) if w]
        self.loss = None

    # -- building ---------------------------------------------------------
    def _connect(self, layer, spec):
        lo, hi = layer.num_bottom
        if len(spec.bottom) < lo or (hi is not None and len(spec.bottom) > hi):
            raise layer.error(f'takes {_count_phrase(lo, hi)} bottom blobs, got {len(spec.bottom)}')
        lo, hi = layer.num_top
        if len(spec.top) < lo or (hi is not None and len(spec.top) > hi):
            raise layer.error(f'takes {_count_phrase(lo, hi)} top blobs, got {len(spec.top)}')
        bottoms = [self.blobs[name] for name in spec.bottom]
        tops = []
        for j, name in enumerate(spec.top):
            if name in spec.bottom:
                if not (layer.inplace and j == 0 and spec.bottom.index(name) == 0):
                    raise layer.error(f"top '{name}' is also a bottom, but {layer.type} "
                                      'cannot compute in place')
                tops.append(self.blobs[name])
                continue
            if name in self.blobs:
                raise layer.error(f"top blob '{name}' is already produced by an earlier layer "
                                  '(only in-place layers may reuse a name)')
            self.blobs[name] = Blob((), self.dtype, name)
            tops.append(self.blobs[name])
        self.bottom_vecs.append(bottoms)
        self.top_vecs.append(tops)
        self.bottom_names.append(list(spec.bottom))
        self.top_names.append(list(spec.top))

    def _collect_params(self):
        self.params = OrderedDict()
        self.param_specs = []    # per layer: list of ParamSpec Messages
        for layer in self.layers:
            specs = list(layer.spec.param)
            if len(specs) > len(layer.blobs):
                raise layer.error(f'{len(specs)} param {{ }} entries for {len(layer.blobs)} '
                                  'parameter blobs')
            specs += [Message(schema.ParamSpec, layer.spec.where)] * (len(layer.blobs) - len(specs))
            for k, spec in enumerate(specs):
                if spec.name:
                    raise layer.error(f"param {{ name: '{spec.name}' }}: shared parameters "
                                      'are not supported')
                layer.param_propagate_down[k] = spec.lr_mult != 0
            self.param_specs.append(specs)
            if layer.blobs:
                self.params[layer.name] = layer.blobs
        self.param_layers = [i for i, layer in enumerate(self.layers) if layer.blobs]
        # Backward readiness: the last layer's gradients are complete first.
        order = list(reversed(self.param_layers))
        self.arena = Arena([(i, self.layers[i].blobs) for i in order], self.dtype)

    def _set_loss_weights(self):
        self.loss_weights = []   # per layer: one weight per top
        for layer, tops in zip(self.layers, self.top_vecs):
            weights = list(layer.spec.loss_weight)
            if len(weights) > len(tops):
                raise layer.error(f'{len(weights)} loss_weight values for {len(tops)} tops')
            weights += [0.0] * (len(tops) - len(weights))
            for w, top in zip(weights, tops):
                if w and top.count != 1:
                    raise layer.error(f"loss_weight on top '{top.name}' of shape {top.shape}: "
                                      'only scalar tops can be losses')
            self.loss_weights.append(weights)

    def _plan_backward(self, force_backward):
        """Caffe's rules for which layers run backward and into which bottoms."""
        n = len(self.layers)
        blob_needs = {name: False for name in self.blobs}
        self.layer_need_backward = [False] * n
        self.bottom_need_backward = []
        for i, layer in enumerate(self.layers):
            need = any(layer.param_propagate_down)
            bottom_need = []
            for j, name in enumerate(self.bottom_names[i]):
                b = blob_needs[name]
                if layer.spec.propagate_down:
                    if len(layer.spec.propagate_down) != len(self.bottom_names[i]):
                        raise layer.error('propagate_down needs one value per bottom')
                    b = layer.spec.propagate_down[j]
                bottom_need.append(b)
                need |= b
            self.bottom_need_backward.append(bottom_need)
            self.layer_need_backward[i] = need
            for name in self.top_names[i]:
                blob_needs[name] = blob_needs[name] or need
        # Walk back from the losses: a layer that no loss depends on needs no backward.
        under_loss, skip = set(), set()
        for i in reversed(range(n)):
            contributes = any(w != 0 or name in under_loss
                              for w, name in zip(self.loss_weights[i], self.top_names[i]))
            skip_down = all(name in skip for name in self.top_names[i])
            if self.layer_need_backward[i] and skip_down and self.top_names[i]:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_names[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, name in enumerate(self.bottom_names[i]):
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip.add(name)
        if force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                self.bottom_need_backward[i] = [
                    b or layer.allow_force_backward(j)
                    for j, b in enumerate(self.bottom_need_backward[i])]
                layer.param_propagate_down = [True] * len(layer.blobs)

    # -- running ------------------------------------------------------------
    def reshape(self):
        """Propagate new input shapes through the net (as pycaffe's ``reshape``)."""
        for i, layer in enumerate(self.layers):
            layer.reshape(self.bottom_vecs[i], self.top_vecs[i])
            self._bottom_shapes[i] = tuple(b.shape for b in self.bottom_vecs[i])

    def forward(self, blobs=None, start=None, end=None, before_layer=None, **inputs):
        """Run the forward pass; returns ``{output name: data}`` and sets ``self.loss``.

        ``inputs`` are copied into the named input blobs first (pycaffe's
        ``net.forward(data=...)``); ``blobs`` lists extra blobs to return;
        ``start``/``end`` are layer names bounding the pass. A pass from the
        first layer is a new batch (``batch.begin_pass()``); one that starts
        further down works on the samples of the last one.
        """
        for name, value in inputs.items():
            if name not in self.blobs:
                raise NetError(f"forward(): no blob named '{name}' in net '{self.name}'")
            blob = self.blobs[name]
            value = np.asarray(value)
            if value.shape != blob.shape:
                raise NetError(f"forward(): input '{name}' has shape {value.shape}, the net "
                               f'expects {blob.shape}; reshape the blob and call net.reshape()')
            blob.data[...] = value
        first = self._index(start, 0)
        last = self._index(end, len(self.layers) - 1)
        shapes = self._bottom_shapes
        if first == 0:
            self.batch.begin_pass()
        for i in range(first, last + 1):
            if before_layer is not None:
                before_layer(i)
            layer, bottom, top = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
            # Caffe reshapes before every forward; the work is only needed when
            # a bottom's shape changed, and skipping it trims the per-layer cost.
            now = tuple(b.shape for b in bottom)
            if now != shapes[i]:
                layer.reshape(bottom, top)
                shapes[i] = now
            layer.forward(bottom, top)
        self.loss = sum(w * float(blob.data.reshape(-1)[0]) for i, blob, w in self._loss_tops
                        if first <= i <= last)
        names = self.outputs if end is None else self.top_names[last]
        out = OrderedDict((name, self.blobs[name].data) for name in names)
        for name in blobs or ():
            out[name] = self.blobs[name].data
        return out

    def backward(self, start=None, end=None, after_layer=None):
        """Run backward from the losses; ``after_layer(i)`` follows layer i's backward.

        Parameter gradients are *added* to ``diff``; call
        ``clear_param_diffs()`` between steps (the solver does).
        Returns ``{input name: diff}`` as pycaffe does.
        """
        first = self._index(start, len(self.layers) - 1)
        last = self._index(end, 0)
        for i in range(first, last - 1, -1):
            for w, blob in zip(self.loss_weights[i], self.top_vecs[i]):
                if w:
                    blob.diff[...] = w
            if self.layer_need_backward[i]:
                self.layers[i].backward(self.top_vecs[i], self.bottom_need_backward[i],
                                        self.bottom_vecs[i])
            if after_layer is not None:
                after_layer(i)
        return OrderedDict((name, self.blobs[name].diff) for name in self.inputs)

    def set_progress(self, progress):
        """Give every layer a callable to run between chunks of long work (or None)."""
        for layer in self.layers:
            layer.progress = progress

    def clear_param_diffs(self):
        self.arena.diff[...] = 0

    def forward_backward(self):
        self.forward()
        self.backward()
        return self.loss

    # -- lookup -------------------------------------------------------------
    def _index(self, name, default):
        if name is None:
            return default
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise NetError(f"no layer named '{name}' in net '{self.name}'")

    @property
    def layer_dict(self):
        return OrderedDict((layer.name, layer) for layer in self.layers)

    @property
    def batch_size(self):
        """Samples per forward pass: axis 0 of the net's first blob (its input data)."""
        first = next(iter(self.blobs.values()), None)
        return int(first.shape[0]) if first is not None and first.shape else 1

    @property
    def layer_names(self):
        return [layer.name for layer in self.layers]

    def param_slice(self, i):
        """Layer i's contiguous slice of ``arena.data`` / ``arena.diff``."""
        return self.arena.segments[i]

    def share_params_from(self, other):
        """View ``other``'s parameter values (Caffe's ShareTrainedLayersWith).

        Layers of the same name then read the same memory, so a test net always
        sees the current training weights without a copy.
        """
        for name, blobs in self.params.items():
            theirs = other.params.get(name)
            if theirs is None:
                continue
            if [b.shape for b in blobs] != [b.shape for b in theirs]:
                raise NetError(f"layer '{name}': parameter shapes {[b.shape for b in blobs]} "
                               f"differ from the other net's {[b.shape for b in theirs]}")
            for mine, src in zip(blobs, theirs):
                mine.bind(src.data, mine.diff)

    def close(self):
        """Stop the layers' background work (data prefetch threads)."""
        for layer in self.layers:
            if hasattr(layer, 'close'):
                layer.close()

    def __repr__(self):
        return f"<Net '{self.name}' {self.phase}: {len(self.layers)} layers, " \
               f'{self.arena.count} parameters>'


def _count_phrase(lo, hi):
    if hi is None:
        return f'at least {lo}'
    return f'{lo}' if lo == hi else f'{lo} to {hi}'
