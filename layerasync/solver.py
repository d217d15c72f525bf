"""Caffe's solvers (SGD, Nesterov, Adam) and AdamW, learning-rate policies, snapshots.

Extensions to Caffe's set, for Transformers: the ``AdamW`` solver (Adam with
decoupled weight decay, Loshchilov and Hutter; PyTorch's ``torch.optim.AdamW``
to rounding), the ``cosine`` learning-rate policy (from ``base_lr`` down to
``min_lr`` at ``max_iter``) and ``warmup_iter``: a linear warm-up from
``base_lr / warmup_iter`` that multiplies any policy for its first
``warmup_iter`` iterations (for ``cosine``, the decay starts after it).

The update is a template method, as in Caffe's ``SGDSolver::ApplyUpdate``:
``begin_update`` fixes the learning rate and the clipping scale for the
iteration, then ``update_layer(l)`` updates one layer on its slice of the
parameter, gradient and history arenas (regularise, compute the step, apply
it, and zero the gradient). A subclass supplies only the rule
(``_apply``). ``update()`` is exactly ``begin_update`` + ``update_layer``
for every layer, which is what lets the distributed strategies update layers
one at a time, in whatever order their gradients arrive.

The gradient arena may hold a multiple of the gradient (a sum over ranks, an
accumulation over ``iter_size``): the caller's ``scale`` (1/P for a sum over
P ranks) and ``iter_size`` are folded into the update kernel instead of
costing extra passes.

``step`` is the one iteration driver: the trainer, the bench and the
benchmarks all run iterations through it, with a strategy deciding what
happens to the gradients. Files (weights, solver state) are ``snapshot``'s.
"""
import dataclasses
import math
import os
from typing import NamedTuple

import numpy as np

from . import proto, schema
from .kernels import solver as K
from .memory import Budget
from .net import TEST, TRAIN, Net, load_net_param
from .snapshot import (atomic_savez, copy_checked, layer_states, load_layer_states, load_weights,
                       net_weights, per_blob, read_solverstate)

__all__ = ['Solver', 'SGDSolver', 'NesterovSolver', 'AdamSolver', 'AdamWSolver', 'get_solver',
           'SolverError', 'load_solver_param', 'SOLVERS', 'ParamSlot', 'param_slots', 'score']


class SolverError(ValueError):
    """A solver file or snapshot that cannot be used as given."""


def load_solver_param(source):
    """A SolverParameter from a path, prototxt text or a Message (see ``proto.load``)."""
    return proto.load(source, schema.SolverParameter)


def remove_solver_layers(param, types):
    """Take the layers of ``types`` out of a SolverParameter's net (in place; see
    ``net.remove_layers``): a ``net`` file is read into ``net_param`` first. A
    solver with separate ``train_net``/``test_net`` files gets a SolverError."""
    from .net import remove_layers
    if param.train_net or param.test_net:
        raise SolverError(f"{param.where}: removing layers needs a solver with one net "
                          "('net' or 'net_param'), not train_net/test_net")
    if not param.has('net_param'):
        if not param.net:
            raise SolverError(f"{param.where}: the solver names no net (set 'net' or 'train_net')")
        param.net_param = load_net_param(_resolve(param.net, _solver_file(param)))
    remove_layers(param.net_param, types)
    return param


def _resolve(path, solver_file):
    """A relative net path: from the solver file's folder if it is there, else
    from the working directory (Caffe's rule)."""
    if os.path.isabs(path) or solver_file is None:
        return path
    beside = os.path.join(os.path.dirname(solver_file), path)
    return beside if os.path.exists(beside) else path


class _Allowed(NamedTuple):
    """A field's allowed values: ``test(value)`` says whether a value is in, ``text`` how to write them."""
    test: object
    text: str


_ANY = _Allowed(math.isfinite, 'any finite number')
_NON_NEGATIVE = _Allowed(lambda v: 0 <= v < math.inf, '>= 0')
_POSITIVE = _Allowed(lambda v: 0 < v < math.inf, '> 0')
_AT_LEAST_1 = _Allowed(lambda v: v >= 1, '>= 1')
_FRACTION = _Allowed(lambda v: 0 <= v < 1, 'in [0, 1)')
_DECAY = _Allowed(lambda v: 0 < v <= 1, 'in (0, 1]')

# The solver fields every solver reads and what they may be (Caffe's meaning;
# Caffe itself checks few of them). Repeated fields: every value.
_FIELDS = {
    'base_lr': _NON_NEGATIVE,
    'momentum': _FRACTION,        # SGD, Nesterov; Adam's beta1
    'momentum2': _FRACTION,       # Adam's beta2
    'delta': _POSITIVE,           # Adam's epsilon
    'rms_decay': _FRACTION,
    'weight_decay': _NON_NEGATIVE,
    # Caffe clips to this global norm; a negative value (the default, -1) turns
    # clipping off, 0 would zero every gradient.
    'clip_gradients': _Allowed(lambda v: v < 0 or 0 < v < math.inf,
                               '< 0 (off) or > 0 (the largest gradient norm)'),
    'iter_size': _AT_LEAST_1,
    'max_iter': _AT_LEAST_1,
    'test_iter': _AT_LEAST_1,
    'test_interval': _NON_NEGATIVE,   # 0: never test
    'display': _NON_NEGATIVE,         # 0: never display
    'snapshot': _NON_NEGATIVE,        # 0: no intermediate snapshots
    'average_loss': _AT_LEAST_1,
    'device_id': _NON_NEGATIVE,
    'warmup_iter': _NON_NEGATIVE,   # 0: no warm-up
    'min_lr': _NON_NEGATIVE,
}


def _exp(x):
    """e ** x, inf where it overflows (as Caffe's double arithmetic gives)."""
    return math.exp(x) if x < 709 else math.inf


# Learning-rate policies as in Caffe's SGDSolver::GetLearningRate; each names
# the fields it needs and their allowed values, checked when the solver is built.
_POLICIES = {
    'fixed': ({}, lambda p, it: p.base_lr),
    'step': ({'gamma': _DECAY, 'stepsize': _AT_LEAST_1},
             lambda p, it: p.base_lr * p.gamma ** (it // p.stepsize)),
    'exp': ({'gamma': _DECAY}, lambda p, it: p.base_lr * p.gamma ** it),
    'inv': ({'gamma': _NON_NEGATIVE, 'power': _NON_NEGATIVE},
            lambda p, it: p.base_lr * (1 + p.gamma * it) ** -p.power),
    'multistep': ({'gamma': _DECAY, 'stepvalue': _NON_NEGATIVE},
                  lambda p, it: p.base_lr * p.gamma ** sum(it >= s for s in p.stepvalue)),
    'poly': ({'power': _NON_NEGATIVE, 'max_iter': _AT_LEAST_1},
             lambda p, it: p.base_lr * (1 - it / p.max_iter) ** p.power),
    'sigmoid': ({'gamma': _ANY, 'stepsize': _NON_NEGATIVE},
                lambda p, it: p.base_lr / (1 + _exp(-p.gamma * (it - p.stepsize)))),
    # An extension (SGDR's and GPT's schedule): half a cosine from base_lr to
    # min_lr over the iterations after the warm-up, then min_lr.
    'cosine': ({'max_iter': _AT_LEAST_1}, lambda p, it: _cosine(p, it)),
}


def _cosine(p, it):
    span = max(1, p.max_iter - p.warmup_iter)
    done = min(1.0, max(0, it - p.warmup_iter) / span)
    return p.min_lr + 0.5 * (1 + math.cos(math.pi * done)) * (p.base_lr - p.min_lr)


class ParamSlot(NamedTuple):
    """One parameter blob's place in the arenas and its update rule."""
    layer: int          # index of its layer in the net
    k: int              # its index among the layer's blobs
    key: str            # 'layer/k', the key in weights and snapshot files
    view: slice         # its slice of arena.data / arena.diff / the histories
    shape: tuple
    lr_mult: float
    decay_mult: float


def param_slots(net):
    """Every parameter blob of ``net`` as a ``ParamSlot``, in net order.

    The one walk of the parameter layout: the solver's updates, the
    snapshot's per-blob views and the parameter servers' pieces all read it.
    """
    slots = []
    for i in net.param_layers:
        start = net.param_slice(i).start
        for k, (blob, spec) in enumerate(zip(net.layers[i].blobs, net.param_specs[i])):
            slots.append(ParamSlot(i, k, f'{net.layers[i].name}/{k}',
                                   slice(start, start + blob.count), tuple(blob.shape),
                                   spec.lr_mult, spec.decay_mult))
            start += blob.count
    return slots


def score(net, iterations):
    """Run ``net`` forward ``iterations`` times: the mean of each output (float64)."""
    totals = {}
    for _ in range(iterations):
        for name, value in net.forward().items():
            totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
    return {name: total / iterations for name, total in totals.items()}


class Solver:
    """Owns the train net, the test nets, the update state and the iteration count.

    ``Solver(path_or_param, seed=None, data=None)``: ``seed`` overrides the
    file's ``random_seed`` (fillers, dropout, shuffling); ``data`` is a
    ``layerasync.data.DataOptions`` (rank shard, synthetic data) for the nets.

    ``memory`` is the run's ``memory.Budget``: the nets reserve their layers
    in it as they are built (the train net's parameters with the solver's
    ``history_count`` histories), and whatever else the run allocates per
    parameter reserves there first (a strategy's extra gradient sets).
    """
    type = None
    history_count = 1
    decoupled_decay = False   # weight decay applied to the weights, not added to the gradient

    def __init__(self, source, seed=None, data=None):
        p = self.param = load_solver_param(source)
        self.solver_file = _solver_file(p)
        self._validate()
        self.seed = seed if seed is not None else (p.random_seed if p.random_seed >= 0 else 0)
        self.data_options = _with_seed(data, self.seed)
        self.memory = Budget(param_sets=2 + self.history_count)
        self.net = Net(self._net_param(TRAIN), TRAIN, seed=self.seed, data=self.data_options,
                       stages=p.train_state.stage, level=p.train_state.level, memory=self.memory)
        self.memory.param_sets = 2   # a test net: its own arenas only, no solver state
        self.test_nets = []
        for k, net_param in enumerate(self._test_net_params()):
            state = p.test_state[k] if k < len(p.test_state) else proto.Message(schema.NetState)
            # Every rank tests on the whole test set (test_iter x batch covers it,
            # as in Caffe), so the scores need no reduction.
            whole = dataclasses.replace(self.data_options, rank=0, world_size=1)
            test = Net(net_param, TEST, seed=self.seed, data=whole,
                       stages=state.stage, level=state.level, memory=self.memory)
            test.share_params_from(self.net)
            self.test_nets.append(test)
        self.iter = 0
        arena = self.net.arena
        self.history = [np.zeros_like(arena.data) for _ in range(self.history_count)]
        self.rate, self.clip_scale, self.step_scale, self.update_iter = None, 1.0, None, 0
        self.slots = param_slots(self.net)
        self.slots_of = {i: [s for s in self.slots if s.layer == i] for i in self.net.param_layers}

    # -- construction -----------------------------------------------------
    def _validate(self):
        """Every field the solver reads in its allowed range (``_FIELDS``, and
        the learning-rate policy's own fields); errors name the field, where
        it was set, its value and what is allowed."""
        p = self.param
        if p.base_lr is None:
            raise SolverError(f'{p.where}: base_lr is required')
        if p.lr_policy not in _POLICIES:
            raise SolverError(f"{p.where_of('lr_policy')}: unknown lr_policy '{p.lr_policy}'; "
                              f"known: {', '.join(_POLICIES)}")
        policy_fields = _POLICIES[p.lr_policy][0]
        for name in policy_fields:
            missing = (not getattr(p, name)) if name == 'stepvalue' else getattr(p, name) is None
            if missing:
                raise SolverError(f"{p.where_of('lr_policy')}: lr_policy '{p.lr_policy}' needs "
                                  f"'{name}' in the solver")
        for name, allowed in {**_FIELDS, **policy_fields}.items():
            value = getattr(p, name)
            for v in (value if isinstance(value, list) else [value]):
                if v is not None and not allowed.test(v):
                    policy = f" for lr_policy '{p.lr_policy}'" if name in policy_fields else ''
                    raise SolverError(f'{p.where_of(name)}: {name} is {v!r}; it must be '
                                      f'{allowed.text}{policy}')
        if p.lr_policy == 'multistep' and p.stepvalue != sorted(set(p.stepvalue)):
            raise SolverError(f"{p.where_of('stepvalue')}: stepvalue {p.stepvalue} must increase "
                              'strictly (the iterations at which the rate drops)')
        if p.regularization_type not in ('L1', 'L2'):
            raise SolverError(f"{p.where_of('regularization_type')}: regularization_type must be "
                              f"L1 or L2, not '{p.regularization_type}'")
        if p.lr_policy == 'cosine' and p.min_lr > p.base_lr:
            raise SolverError(f"{p.where_of('min_lr')}: min_lr {p.min_lr:g} is above base_lr "
                              f"{p.base_lr:g}; lr_policy 'cosine' decays from base_lr to min_lr")
        if self.decoupled_decay and p.regularization_type != 'L2':
            raise SolverError(f"{p.where_of('regularization_type')}: {self.type} decays the "
                              'weights directly (decoupled weight decay); regularization_type '
                              f"'{p.regularization_type}' has no meaning there: remove it")
        if len(p.test_iter) != len(self._test_net_params()):
            raise SolverError(f"{p.where_of('test_iter')}: {len(p.test_iter)} test_iter values "
                              f'for {len(self._test_net_params())} test nets')

    def _net_param(self, phase):
        p = self.param
        if p.has('net_param'):
            return p.net_param
        path = p.train_net if phase == TRAIN and p.train_net else p.net
        if not path:
            raise SolverError(f"{p.where}: the solver names no net (set 'net' or 'train_net')")
        return load_net_param(_resolve(path, self.solver_file))

    def _test_net_params(self):
        p = self.param
        if p.test_net:
            return [load_net_param(_resolve(t, self.solver_file)) for t in p.test_net]
        if p.test_iter and (p.net or p.has('net_param')):
            return [self._net_param(TEST)]
        return []

    # -- the update -----------------------------------------------------------
    def learning_rate(self, iteration=None):
        p = self.param
        it = self.iter if iteration is None else iteration
        rate = _POLICIES[p.lr_policy][1](p, it)
        if it < p.warmup_iter:
            rate *= (it + 1) / p.warmup_iter
        return rate

    @property
    def needs_all_gradients(self):
        """Clipping needs the global gradient norm before any layer is updated."""
        return self.param.clip_gradients > 0

    def begin_update(self, grad=None, scale=1.0, norm=None):
        """Fix the learning rate, iteration and clipping scale of the coming update.

        ``grad`` is the gradient buffer (default: the net's gradient arena),
        holding ``1 / scale`` times the gradient (``scale`` = 1/P for a sum
        over P ranks); clipping reads all of it, so every reduction must be
        complete. ``norm``: the gradient's norm, when the caller computed it
        (a gradient held in shards); then ``grad`` is not read.
        """
        self.update_iter = self.iter
        self.rate = self.learning_rate()
        self.clip_scale = 1.0
        if self.needs_all_gradients:
            if norm is None:
                grad = self.net.arena.diff if grad is None else grad
                norm = math.sqrt(K.sum_of_squares(grad)) * scale
            if norm > self.param.clip_gradients:
                self.clip_scale = self.param.clip_gradients / norm
        self.step_scale = scale * self.clip_scale / self.param.iter_size

    def update_layer(self, i, grad=None):
        """Update layer ``i`` from its slice of ``grad`` (default: the gradient
        arena), then zero that slice for the next accumulation."""
        for slot in self.slots_of[i]:
            self.update_slice(slot.view, slot.lr_mult, slot.decay_mult, grad)

    def update_slice(self, view, lr_mult=1.0, decay_mult=1.0, grad=None):
        """Update the parameters in arena slice ``view`` (one parameter blob or
        a piece of one, whose ``param { lr_mult decay_mult }`` are given) as
        ``update_layer`` does, with the rate fixed by ``begin_update``; zero
        that slice of ``grad``. A parameter server updates its pieces with it."""
        grad = self.net.arena.diff if grad is None else grad
        if lr_mult == 0:
            grad[view] = 0.0  # only written under force_backward; never applied
            return
        self.update_arrays(self.net.arena.data[view], grad[view], [h[view] for h in self.history],
                           lr_mult, decay_mult)

    def update_arrays(self, weights, grad, history, lr_mult=1.0, decay_mult=1.0):
        """The update rule on given arrays of one size (weights, the gradient,
        one per history), with the rate fixed by ``begin_update``; zeroes
        ``grad``. ``sharded`` updates its shard with it: the shard's gradient
        and histories live outside the arenas."""
        p = self.param
        self._apply(weights, grad, history, self.rate * lr_mult, p.weight_decay * decay_mult,
                    self.step_scale, p.regularization_type == 'L1')

    def update(self, grad=None, scale=1.0):
        """The whole step: exactly ``begin_update`` then every layer's update."""
        self.begin_update(grad, scale)
        for i in self.net.param_layers:
            self.update_layer(i, grad)

    def _apply(self, w, g, history, rate, decay, scale, l1):
        """The update rule on one slice: weights, gradient, history slices."""
        raise NotImplementedError

    # -- iterating ---------------------------------------------------------
    def forward_backward(self, before_layer=None, after_layer=None, after_forward=None):
        """``iter_size`` forward/backward passes accumulating gradients; mean loss.

        ``after_layer`` is called only in the last pass, when each layer's
        gradient is complete; ``after_forward()`` after each forward pass.
        """
        n = self.param.iter_size
        loss = 0.0
        for k in range(n):
            self.net.forward(before_layer=before_layer)
            if after_forward is not None:
                after_forward()
            self.net.backward(after_layer=after_layer if k == n - 1 else None)
            loss += self.net.loss
        return loss / n

    def step(self, iters=1, strategy=None, hooks=None, on_loss=None):
        """Train ``iters`` iterations (pycaffe's ``solver.step``); the last one's loss.

        The one iteration driver. Each iteration runs ``forward_backward``
        with the hooks of ``hooks`` (default: the strategy; an object with
        ``before_forward(i)``, ``after_backward(i)`` and ``end_forward()``),
        calls ``on_loss(loss)`` before anything is updated (the trainer
        checks and displays the loss there), then ``strategy.end_iteration()``
        (``strategy`` None: this process alone, ``update()``), and counts the
        iteration.
        """
        hooks = hooks or strategy
        loss = None
        for _ in range(iters):
            if hooks is None:
                loss = self.forward_backward()
            else:
                loss = self.forward_backward(hooks.before_forward, hooks.after_backward,
                                             hooks.end_forward)
            if on_loss is not None:
                on_loss(loss)
            if strategy is None:
                self.update()
            else:
                strategy.end_iteration()
            self.iter += 1
        return loss

    def test(self, index=0):
        """Run test net ``index`` for its ``test_iter`` batches: mean of each output."""
        return score(self.test_nets[index], self.param.test_iter[index])

    # -- snapshots ---------------------------------------------------------
    def snapshot(self, prefix=None, extra=None, history=None):
        """Write ``<prefix>_iter_<N>.weights.npz`` and ``.solverstate.npz`` atomically.

        ``extra`` (name -> array) is stored with the solver state (strategies
        keep in-flight gradients there); ``history`` replaces ``self.history``
        when a strategy holds the solver state in shards (``gather_state``).
        Returns the solver-state path.
        """
        path = self.snapshot_path(prefix)
        weights = path[:-len('.solverstate.npz')] + '.weights.npz'
        atomic_savez(weights, net_weights(self.net))
        state = {'iter': np.array(self.iter), 'type': np.array(self.type),
                 'weights': np.array(os.path.basename(weights))}
        for h, whole in enumerate(self.history if history is None else history):
            for key, view in per_blob(self.slots, whole).items():
                state[f'history{h}/{key}'] = view
        for prefix, net in self._nets():
            state.update(layer_states(net, prefix))
        for key, value in (extra or {}).items():
            state[f'extra/{key}'] = np.asarray(value)
        atomic_savez(path, state)
        return path

    def snapshot_path(self, prefix=None):
        """Where ``snapshot`` writes the solver state at the current iteration."""
        prefix = prefix if prefix is not None else self.param.snapshot_prefix
        return f'{prefix}_iter_{self.iter}.solverstate.npz'

    def restore(self, path):
        """Resume from a ``.solverstate.npz``: weights, history, iteration and data positions.

        Returns the ``extra`` arrays stored with it.
        """
        state, weights = read_solverstate(path, self.type)
        load_weights(self.net, weights, strict=True)
        for h, history in enumerate(self.history):
            views = per_blob(self.slots, history)
            copy_checked(views, {k[len(f'history{h}/'):]: v for k, v in state.items()
                                  if k.startswith(f'history{h}/')}, path)
        self.iter = int(state['iter'])
        for prefix, net in self._nets():
            load_layer_states(net, prefix, state)
        return {k[len('extra/'):]: v for k, v in state.items() if k.startswith('extra/')}

    def _nets(self):
        """(snapshot key prefix, net) for the train net and every test net."""
        return [('', self.net)] + [(f'test{k}/', net) for k, net in enumerate(self.test_nets)]

    def close(self):
        """Stop the nets' background work (data prefetching)."""
        for _, net in self._nets():
            net.close()


def _solver_file(param):
    """The file a solver was read from (its ``where`` is ``file:line:col``), if any."""
    path = param.where.rsplit(':', 2)[0]
    return path if os.path.isfile(path) else None


def _with_seed(data, seed):
    from .data import DataOptions
    return dataclasses.replace(data or DataOptions(), seed=seed)


class SGDSolver(Solver):
    """Caffe's SGD with momentum: h = momentum h + rate g;  w -= h."""
    type = 'SGD'

    def _apply(self, w, g, history, rate, decay, scale, l1):
        K.sgd_update(w, g, history[0], rate, self.param.momentum, decay, scale, l1)


class NesterovSolver(Solver):
    """Caffe's Nesterov momentum: w -= (1 + momentum) h' - momentum h."""
    type = 'Nesterov'

    def _apply(self, w, g, history, rate, decay, scale, l1):
        K.nesterov_update(w, g, history[0], rate, self.param.momentum, decay, scale, l1)


class AdamSolver(Solver):
    """Caffe's Adam: momentum is beta1, momentum2 beta2, delta epsilon."""
    type = 'Adam'
    history_count = 2

    def _apply(self, w, g, history, rate, decay, scale, l1):
        p = self.param
        t = self.update_iter + 1
        corrected = rate * math.sqrt(1 - p.momentum2 ** t) / (1 - p.momentum ** t)
        K.adam_update(w, g, history[0], history[1], corrected, p.momentum, p.momentum2,
                      p.delta, decay, scale, l1)


class AdamWSolver(Solver):
    """Adam with decoupled weight decay (an extension to Caffe's set), as
    ``torch.optim.AdamW``: w *= 1 - rate * decay, then the Adam step with
    epsilon added to the bias-corrected root of the second moment. momentum is
    beta1, momentum2 beta2, delta epsilon; ``weight_decay`` times
    ``decay_mult`` is the decay (give biases and norms ``decay_mult: 0`` to
    exempt them, as GPT training does)."""
    type = 'AdamW'
    history_count = 2
    decoupled_decay = True

    def _apply(self, w, g, history, rate, decay, scale, l1):
        p = self.param
        t = self.update_iter + 1
        K.adamw_update(w, g, history[0], history[1], rate, p.momentum, p.momentum2, p.delta,
                       1 - p.momentum ** t, math.sqrt(1 - p.momentum2 ** t), decay, scale)


SOLVERS = {'SGD': SGDSolver, 'Nesterov': NesterovSolver, 'Adam': AdamSolver,
           'AdamW': AdamWSolver}
_LEGACY_TYPES = {'SGD': 'SGD', 'NESTEROV': 'Nesterov', 'ADAM': 'Adam'}


def get_solver(source, seed=None, data=None, type=None):
    """The solver a solver file asks for (``type``, or the legacy ``solver_type``)."""
    param = load_solver_param(source)
    name = type or param.type
    if type is None and not param.has('type') and param.has('solver_type'):
        name = _LEGACY_TYPES.get(param.solver_type, param.solver_type)
    if name not in SOLVERS:
        raise SolverError(f"{param.where_of('type')}: unknown solver type '{name}'; "
                          f"known: {', '.join(SOLVERS)}")
    return SOLVERS[name](param, seed=seed, data=data)
