"""From a NetParameter to the layer list a Net builds, by Caffe's rules.

``layer_specs(param, state)`` is Caffe's ``Net::FilterNet`` and
``InsertSplits`` on the parsed file: keep the layers whose include/exclude
rules match the net state, turn the legacy top-level ``input:`` fields into
an Input layer, check types and names, give loss layers their default loss
weight, and insert a Split wherever a blob feeds several consumers. It works
on ``LayerParameter`` messages only: no layer is built here. A number that
is not finite in float32 (``inf``, ``nan``, or beyond 3.4e38, which the
layers' float32 arithmetic turns into inf) is refused in any field of a
layer: none has a meaning for it.
"""
import numpy as np

from . import schema
from .layers import LAYERS, NetError
from .proto import Message

__all__ = ['layer_specs']


def layer_specs(param, state):
    """The LayerParameters of ``param`` that a net in ``state`` (a NetState) builds, in order."""
    specs = _legacy_inputs(param) + [s for s in param.layer if _state_matches(s, state)]
    for spec in specs:
        if spec.type not in LAYERS:
            raise NetError(f"{spec.where_of('type')}: layer '{spec.name}': unknown type "
                           f"'{spec.type}'; known types: {', '.join(sorted(LAYERS))}")
        _check_finite(spec, spec.name)
    _check_names(specs)
    return _insert_splits([_with_default_loss_weight(s) for s in specs])


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_finite(message, layer, path=''):
    """Every number set in ``message`` (recursively) is finite in float32."""
    for name, value in message.items():
        field = f'{path}{name}'
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, Message):
                _check_finite(v, layer, f'{field}.')
            elif isinstance(v, float) and not abs(v) <= _FLOAT32_MAX:
                raise NetError(f"{message.where_of(name)}: layer '{layer}': {field} is {v:g}; "
                               f'it must be a finite number, at most {_FLOAT32_MAX:.4g} in size')


def _check_names(specs):
    seen = {}
    for spec in specs:
        if not spec.name:
            raise NetError(f'{spec.where}: a layer of type {spec.type} has no name')
        if spec.name in seen:
            raise NetError(f"{spec.where}: layer name '{spec.name}' used twice "
                           f'(first at {seen[spec.name]})')
        seen[spec.name] = spec.where


def _state_matches(spec, state):
    """Caffe's StateMeetsRule over include (any rule matches) / exclude (none)."""
    def meets(rule):
        if rule.phase is not None and rule.phase != state.phase:
            return False
        if rule.min_level is not None and state.level < rule.min_level:
            return False
        if rule.max_level is not None and state.level > rule.max_level:
            return False
        if any(s not in state.stage for s in rule.stage):
            return False
        return not any(s in state.stage for s in rule.not_stage)

    if spec.include and spec.exclude:
        raise NetError(f"{spec.where}: layer '{spec.name}' has both include and exclude rules; "
                       'Caffe allows one kind only')
    if spec.include:
        return any(meets(r) for r in spec.include)
    return not any(meets(r) for r in spec.exclude)


def _legacy_inputs(param):
    """The old top-level ``input:`` / ``input_shape`` / ``input_dim`` as an Input layer."""
    if not param.input:
        if param.input_shape or param.input_dim:
            raise NetError(f'{param.where}: input_shape/input_dim given without input names')
        return []
    shapes = [list(s.dim) for s in param.input_shape]
    if param.input_dim:
        if len(param.input_dim) != 4 * len(param.input):
            raise NetError(f"{param.where_of('input_dim')}: input_dim needs 4 values per input "
                           f'({len(param.input)} inputs, {len(param.input_dim)} dims)')
        shapes = [param.input_dim[4 * i:4 * i + 4] for i in range(len(param.input))]
    if len(shapes) != len(param.input):
        raise NetError(f"{param.where_of('input')}: {len(param.input)} inputs but "
                       f'{len(shapes)} input shapes')
    where = param.where_of('input')
    layer = Message(schema.LayerParameter, where)
    layer.name, layer.type, layer.top = 'input', 'Input', list(param.input)
    layer.input_param = Message(schema.InputParameter, where,
                                {'shape': [Message(schema.BlobShape, where, {'dim': s})
                                           for s in shapes]})
    return [layer]


def _with_default_loss_weight(spec):
    """Loss layers weigh their first top 1 unless told otherwise (Caffe's LossLayer).

    Set before splits are inserted, so a loss that is also read by another
    layer keeps its weight (the weight moves onto the split).
    """
    if spec.loss_weight or not LAYERS[spec.type].is_loss:
        return spec
    spec = spec.copy()
    spec.loss_weight = [1.0]
    return spec


def _split_name(blob, layer, top_index, k=None):
    base = f'{blob}_{layer}_{top_index}_split'
    return base if k is None else f'{base}_{k}'


def _insert_splits(specs):
    """Caffe's InsertSplits: a blob read by several layers gets a Split layer."""
    last_producer = {}   # blob name -> (layer index, top index)
    source = {}          # (layer, bottom index) -> (layer, top index)
    consumers = {}       # (layer, top index) -> number of consumers
    for i, spec in enumerate(specs):
        for j, name in enumerate(spec.bottom):
            if name not in last_producer:
                known = ', '.join(sorted(last_producer)) or 'none'
                raise NetError(f"{spec.where_of('bottom')}: layer '{spec.name}' ({spec.type}): "
                               f"unknown bottom blob '{name}'; blobs produced above it: {known}")
            source[i, j] = last_producer[name]
            consumers[last_producer[name]] = consumers.get(last_producer[name], 0) + 1
        for j, name in enumerate(spec.top):
            last_producer[name] = (i, j)
            if j < len(spec.loss_weight) and spec.loss_weight[j] != 0:
                consumers[i, j] = consumers.get((i, j), 0) + 1
    out, used = [], {}
    for i, spec in enumerate(specs):
        spec = spec.copy()
        for j, name in enumerate(spec.bottom):
            src = source[i, j]
            if consumers[src] > 1:
                k = used.get(src, 0)
                used[src] = k + 1
                spec.bottom[j] = _split_name(name, specs[src[0]].name, src[1], k)
        out.append(spec)
        for j, name in enumerate(spec.top):
            n = consumers.get((i, j), 0)
            if n <= 1:
                continue
            split = Message(schema.LayerParameter, spec.where)
            split.name, split.type = _split_name(name, spec.name, j), 'Split'
            split.bottom = [name]
            split.top = [_split_name(name, spec.name, j, k) for k in range(n)]
            if j < len(spec.loss_weight) and spec.loss_weight[j] != 0:
                # Consumers take the split's first outputs; the loss weight goes
                # on the last one, which nothing else reads or overwrites.
                split.loss_weight = [0.0] * (n - 1) + [spec.loss_weight[j]]
                spec.loss_weight[j] = 0.0
            out.append(split)
    return out
