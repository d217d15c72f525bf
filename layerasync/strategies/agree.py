"""The start of a distributed run: agree, then take rank 0's state.

Every rank describes, as lines of text, everything that decides which
collective calls it will make and what it will compute: the net it built
(every layer's definition and parameter shape), every solver field (the
update rule, but also ``max_iter``, ``test_interval``, ``snapshot``, ...),
the strategy's settings with the communicator settings *in force*, and
what the caller adds (the trainer: the resume point, the data options, the
seed, tracing). The lines are derived from the objects themselves, so a new
solver field or layer parameter is covered without a list to keep.

A difference stops every rank together (``AgreedError``), naming the rank
and the first differing line; otherwise every rank copies rank 0's arrays
(weights, and for a parameter-server job also the iteration and the solver
history), so all start from the same state. The allreduce strategies and the
parameter-server job both start through ``agree``.
"""

__all__ = ['agree', 'describe', 'message_lines']

# Solver fields that only say where the net came from; the built net is described instead.
_NET_SOURCES = ('net', 'net_param', 'train_net', 'test_net')


def message_lines(prefix, message, skip=()):
    """Every field of a ``proto.Message`` as ``'prefix.field = value'`` lines, in
    schema order: scalar fields with the value in force (set or default),
    nested messages that were set (and every repeated one), flattened."""
    lines = []
    for name, field in message.schema.fields.items():
        if name in skip:
            continue
        value = getattr(message, name)
        if field.kind != 'msg':
            lines.append(f'{prefix}.{name} = {value!r}')
        elif field.repeated:
            for k, item in enumerate(value):
                lines += message_lines(f'{prefix}.{name}[{k}]', item)
        elif message.has(name):
            lines += message_lines(f'{prefix}.{name}', value)
    return lines


def describe(solver, settings, context=()):
    """What every rank of a run must agree on, as lines (see the module docstring).

    ``settings``: the strategy's (name -> value); ``context``: the caller's lines.
    """
    net = solver.net
    lines = [f'parameter {name}[{k}] of shape {tuple(b.shape)}'
             for name, blobs in net.params.items() for k, b in enumerate(blobs)]
    for i, layer in enumerate(net.layers):
        lines += message_lines(f'net layer {i}', layer.spec)
    lines += message_lines('solver', solver.param, skip=_NET_SOURCES)
    lines += [f'setting {key} = {value!r}' for key, value in sorted(settings.items())]
    return lines + list(context)


def agree(control, lines, arrays=(), describe=lambda rank: f'rank {rank}'):
    """Collective over the ranks of ``control`` (a ``comm.control.Control`` or
    anything with its ``check_same`` and ``bcast``).

    Raises ``AgreedError`` on every rank, naming ``describe(rank)`` of the
    first rank whose ``lines`` differ from rank 0's; otherwise makes each
    array of ``arrays`` rank 0's, in place, in order.
    """
    control.check_same(lines, describe)
    for array in arrays:
        control.bcast(array, root=0)
