"""What the workers and the servers of a parameter-server job share: the
layout of the pieces, the settings they must agree on, the start-up, and the
solver rules a server can apply.
"""
import numpy as np

from ..comm.control import Control
from .base import describe_run, update_rule

__all__ = ['Layout', 'check_solver', 'staleness_bound', 'job_settings', 'start_job',
           'DEFAULT_STALENESS']

DEFAULT_STALENESS = 2


def check_solver(solver, name):
    """Refuse what a server cannot do (errors name the strategy and the fix)."""
    if solver.param.clip_gradients > 0:
        raise ValueError(f'{name}: clip_gradients needs the norm of the whole gradient, which no '
                         'single server holds; unset clip_gradients or use an allreduce strategy')
    if name == 'ps-async' and solver.type != 'SGD':
        raise ValueError(f"ps-async applies each worker's gradient on its own, which is defined "
                         f'for SGD with momentum only, not {solver.type}; use ps-sync, '
                         'or type: "SGD"')


def staleness_bound(name, staleness):
    """The staleness bound S of strategy ``name`` (``staleness`` None: the default)."""
    if name == 'ps-sync':
        if staleness not in (None, 0):
            raise ValueError(f'ps-sync is synchronous; --staleness {staleness} applies to '
                             'ps-async')
        return 0
    staleness = DEFAULT_STALENESS if staleness is None else staleness
    if not (isinstance(staleness, int) and staleness >= 0):
        raise ValueError(f'ps-async: the staleness bound must be an integer >= 0, '
                         f'not {staleness!r}')
    return staleness


class Layout:
    """The trainable parameters cut into pieces over ``servers``; the same on every rank.

    ``pieces[p]`` is a ``comm.ps.Piece``; ``layer[p]``, ``name[p]`` (like
    ``'ip1[0]'``) and ``rule[p]`` = (lr_mult, decay_mult) describe its blob;
    ``by_layer[i]`` and ``by_server[s]`` list pieces. Blobs with lr_mult 0
    (BatchNorm's running statistics) are not served: each worker keeps its
    own, as under allreduce, and the trainer averages them.
    """

    def __init__(self, net, servers):
        from ..comm.ps import shard
        blobs = []
        for i in net.param_layers:
            start = net.param_slice(i).start
            for k, (blob, spec) in enumerate(zip(net.layers[i].blobs, net.param_specs[i])):
                if spec.lr_mult != 0:
                    blobs.append((start, start + blob.count, i, f'{net.layers[i].name}[{k}]',
                                  (spec.lr_mult, spec.decay_mult)))
                start += blob.count
        blobs.sort()
        self.pieces = shard([b[:2] for b in blobs], servers)
        self.layer, self.name, self.rule = ([blobs[p.blob][j] for p in self.pieces]
                                            for j in (2, 3, 4))
        self.by_layer, self.by_server = {}, {s: [] for s in range(servers)}
        for p in self.pieces:
            self.by_layer.setdefault(self.layer[p.index], []).append(p)
            self.by_server[p.server].append(p)


def job_settings(solver, name, staleness, servers, workers):
    """What every rank of the job, servers included, must agree on."""
    return {'strategy': name, 'staleness': staleness, 'servers': servers, 'workers': workers,
            **update_rule(solver),
            'batch': [tuple(b.shape) for b in solver.net.blobs.values()][:1]}


def start_job(roles, solver, settings):
    """Collective over the whole job: check that every rank built the same net and
    settings, then give every rank world rank 0's weights, history and iteration."""
    net = solver.net
    Control(roles.control).check_same(describe_run(net, settings), roles.describe)
    iteration = np.array([solver.iter], np.int64)
    for array in [iteration, net.arena.data, *solver.history]:
        roles.control.Bcast(array, root=0)
    solver.iter = int(iteration[0])
