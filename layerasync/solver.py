"""Caffe's solvers (SGD, Nesterov, Adam), learning-rate policies, snapshots.

The update is a template method, as in Caffe's ``SGDSolver::ApplyUpdate``:
``begin_update`` fixes the learning rate and the clipping scale for the
iteration, then ``update_layer(l)`` updates one layer on its slice of the
parameter, gradient and history arenas (regularise, compute the step, apply
it, and zero the gradient). A subclass supplies only the rule
(``_apply``). ``update()`` is exactly ``begin_update`` + ``update_layer``
for every layer, which is what lets the distributed strategies update layers
one at a time, in whatever order their gradients arrive.

The gradient arena may hold a multiple of the gradient (a sum over ranks, an
accumulation over ``iter_size``): ``grad_scale`` and ``iter_size`` are folded
into the update kernel instead of costing extra passes.
"""
import dataclasses
import json
import math
import os
import tempfile

import numpy as np

from . import proto, schema
from .kernels import solver as K
from .net import TEST, TRAIN, Net, load_net_param

__all__ = ['Solver', 'SGDSolver', 'NesterovSolver', 'AdamSolver', 'get_solver',
           'SolverError', 'load_solver_param', 'SOLVERS']


class SolverError(ValueError):
    """A solver file or snapshot that cannot be used as given."""


def load_solver_param(source):
    """A SolverParameter from a path, prototxt text or a Message (see ``proto.load``)."""
    return proto.load(source, schema.SolverParameter)


def _resolve(path, solver_file):
    """A relative net path: from the solver file's folder if it is there, else
    from the working directory (Caffe's rule)."""
    if os.path.isabs(path) or solver_file is None:
        return path
    beside = os.path.join(os.path.dirname(solver_file), path)
    return beside if os.path.exists(beside) else path


# Learning-rate policies as in Caffe's SGDSolver::GetLearningRate; each names
# the fields it needs, checked once when the solver is built.
_POLICIES = {
    'fixed': ((), lambda p, it: p.base_lr),
    'step': (('gamma', 'stepsize'), lambda p, it: p.base_lr * p.gamma ** (it // p.stepsize)),
    'exp': (('gamma',), lambda p, it: p.base_lr * p.gamma ** it),
    'inv': (('gamma', 'power'), lambda p, it: p.base_lr * (1 + p.gamma * it) ** -p.power),
    'multistep': (('gamma', 'stepvalue'),
                  lambda p, it: p.base_lr * p.gamma ** sum(it >= s for s in p.stepvalue)),
    'poly': (('power', 'max_iter'), lambda p, it: p.base_lr * (1 - it / p.max_iter) ** p.power),
    'sigmoid': (('gamma', 'stepsize'),
                lambda p, it: p.base_lr / (1 + math.exp(-p.gamma * (it - p.stepsize)))),
}


class Solver:
    """Owns the train net, the test nets, the update state and the iteration count.

    ``Solver(path_or_param, seed=None, data=None)``: ``seed`` overrides the
    file's ``random_seed`` (fillers, dropout, shuffling); ``data`` is a
    ``layerasync.data.DataOptions`` (rank shard, synthetic data) for the nets.
    """
    type = None
    history_count = 1

    def __init__(self, source, seed=None, data=None):
        p = self.param = load_solver_param(source)
        self.solver_file = _solver_file(p)
        self._validate()
        self.seed = seed if seed is not None else (p.random_seed if p.random_seed >= 0 else 0)
        self.data_options = _with_seed(data, self.seed)
        self.net = Net(self._net_param(TRAIN), TRAIN, seed=self.seed, data=self.data_options,
                       stages=p.train_state.stage, level=p.train_state.level)
        self.test_nets = []
        for k, net_param in enumerate(self._test_net_params()):
            state = p.test_state[k] if k < len(p.test_state) else proto.Message(schema.NetState)
            # Every rank tests on the whole test set (test_iter x batch covers it,
            # as in Caffe), so the scores need no reduction.
            whole = dataclasses.replace(self.data_options, rank=0, world_size=1)
            test = Net(net_param, TEST, seed=self.seed, data=whole,
                       stages=state.stage, level=state.level)
            test.share_params_from(self.net)
            self.test_nets.append(test)
        self.iter = 0
        arena = self.net.arena
        self.history = [np.zeros_like(arena.data) for _ in range(self.history_count)]
        self.grad_scale = 1.0
        self.rate, self.clip_scale, self.step_scale, self.update_iter = None, 1.0, None, 0
        self._plan = self._plan_updates()

    # -- construction -----------------------------------------------------
    def _validate(self):
        p = self.param
        if p.base_lr is None:
            raise SolverError(f'{p.where}: base_lr is required')
        if p.lr_policy not in _POLICIES:
            raise SolverError(f"{p.where_of('lr_policy')}: unknown lr_policy '{p.lr_policy}'; "
                              f"known: {', '.join(_POLICIES)}")
        for name in _POLICIES[p.lr_policy][0]:
            missing = (not getattr(p, name)) if name == 'stepvalue' else getattr(p, name) is None
            if missing:
                raise SolverError(f"{p.where_of('lr_policy')}: lr_policy '{p.lr_policy}' needs "
                                  f"'{name}' in the solver")
        if p.regularization_type not in ('L1', 'L2'):
            raise SolverError(f"{p.where_of('regularization_type')}: regularization_type must be "
                              f"L1 or L2, not '{p.regularization_type}'")
        if p.iter_size < 1:
            raise SolverError(f"{p.where_of('iter_size')}: iter_size must be >= 1")
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

    def _plan_updates(self):
        """Per layer: the (arena slice, lr_mult, decay_mult) of each parameter blob."""
        plan = {}
        for i in self.net.param_layers:
            start = self.net.param_slice(i).start
            entries = []
            for blob, spec in zip(self.net.layers[i].blobs, self.net.param_specs[i]):
                entries.append((slice(start, start + blob.count), spec.lr_mult, spec.decay_mult))
                start += blob.count
            plan[i] = entries
        return plan

    # -- the update -----------------------------------------------------------
    def learning_rate(self, iteration=None):
        it = self.iter if iteration is None else iteration
        return _POLICIES[self.param.lr_policy][1](self.param, it)

    @property
    def needs_all_gradients(self):
        """Clipping needs the global gradient norm before any layer is updated."""
        return self.param.clip_gradients > 0

    def begin_update(self, grad=None):
        """Fix the learning rate, iteration and clipping scale of the coming update.

        ``grad`` is the gradient buffer (default: the net's gradient arena);
        clipping reads all of it, so every reduction must be complete.
        """
        self.update_iter = self.iter
        self.rate = self.learning_rate()
        self.clip_scale = 1.0
        if self.needs_all_gradients:
            grad = self.net.arena.diff if grad is None else grad
            norm = math.sqrt(K.sum_of_squares(grad)) * self.grad_scale
            if norm > self.param.clip_gradients:
                self.clip_scale = self.param.clip_gradients / norm
        self.step_scale = self.grad_scale * self.clip_scale / self.param.iter_size

    def update_layer(self, i, grad=None):
        """Update layer ``i`` from its slice of ``grad`` (default: the gradient
        arena), then zero that slice for the next accumulation."""
        for view, lr_mult, decay_mult in self._plan[i]:
            self.update_slice(view, lr_mult, decay_mult, grad)

    def update_slice(self, view, lr_mult=1.0, decay_mult=1.0, grad=None):
        """Update the parameters in arena slice ``view`` (one parameter blob or
        a piece of one, whose ``param { lr_mult decay_mult }`` are given) as
        ``update_layer`` does, with the rate fixed by ``begin_update``; zero
        that slice of ``grad``. A parameter server updates its pieces with it."""
        p = self.param
        grad = self.net.arena.diff if grad is None else grad
        if lr_mult == 0:
            grad[view] = 0.0  # only written under force_backward; never applied
            return
        self._apply(self.net.arena.data[view], grad[view], [h[view] for h in self.history],
                    self.rate * lr_mult, p.weight_decay * decay_mult, self.step_scale,
                    p.regularization_type == 'L1')

    def update(self, grad=None):
        """The whole step: exactly ``begin_update`` then every layer's update."""
        self.begin_update(grad)
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

    def step(self, iters=1):
        """pycaffe's ``solver.step``: train ``iters`` iterations in this process."""
        for _ in range(iters):
            self.forward_backward()
            self.update()
            self.iter += 1

    def test(self, index=0):
        """Run test net ``index`` for its ``test_iter`` batches: mean of each output."""
        net, iters = self.test_nets[index], self.param.test_iter[index]
        totals = {}
        for _ in range(iters):
            for name, value in net.forward().items():
                totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
        return {name: total / iters for name, total in totals.items()}

    # -- snapshots ---------------------------------------------------------
    def snapshot(self, prefix=None, extra=None):
        """Write ``<prefix>_iter_<N>.weights.npz`` and ``.solverstate.npz`` atomically.

        ``extra`` (name -> array) is stored with the solver state (strategies
        keep in-flight gradients there). Returns the solver-state path.
        """
        path = self.snapshot_path(prefix)
        weights = path[:-len('.solverstate.npz')] + '.weights.npz'
        _atomic_savez(weights, net_weights(self.net))
        state = {'iter': np.array(self.iter), 'type': np.array(self.type),
                 'weights': np.array(os.path.basename(weights))}
        for h, history in enumerate(self.history):
            for key, view in _per_blob(self.net, history).items():
                state[f'history{h}/{key}'] = view
        for prefix, net in self._nets():
            state.update(_layer_states(net, prefix))
        for key, value in (extra or {}).items():
            state[f'extra/{key}'] = np.asarray(value)
        _atomic_savez(path, state)
        return path

    def snapshot_path(self, prefix=None):
        """Where ``snapshot`` writes the solver state at the current iteration."""
        prefix = prefix if prefix is not None else self.param.snapshot_prefix
        return f'{prefix}_iter_{self.iter}.solverstate.npz'

    def restore(self, path):
        """Resume from a ``.solverstate.npz``: weights, history, iteration, RNG and data position.

        Returns the ``extra`` arrays stored with it.
        """
        state = _load_npz(path)
        if str(state['type']) != self.type:
            raise SolverError(f'{path}: snapshot of a {state["type"]} solver, this is {self.type}')
        weights = os.path.join(os.path.dirname(path), str(state['weights']))
        load_weights(self.net, weights, strict=True)
        for h, history in enumerate(self.history):
            views = _per_blob(self.net, history)
            _copy_checked(views, {k[len(f'history{h}/'):]: v for k, v in state.items()
                                  if k.startswith(f'history{h}/')}, path)
        self.iter = int(state['iter'])
        for prefix, net in self._nets():
            _load_layer_states(net, prefix, state)
        return {k[len('extra/'):]: v for k, v in state.items() if k.startswith('extra/')}

    def _nets(self):
        """(snapshot key prefix, net) for the train net and every test net."""
        return [('', self.net)] + [(f'test{k}/', net) for k, net in enumerate(self.test_nets)]

    def close(self):
        """Stop the nets' background work (data prefetching)."""
        for _, net in self._nets():
            net.close()


def _layer_states(net, prefix):
    """Every layer's random stream and, for data layers, the read position."""
    state = {}
    for layer in net.layers:
        state[f'{prefix}rng/{layer.name}'] = np.array(json.dumps(layer.rng.bit_generator.state))
        if hasattr(layer, 'state_dict'):
            for key, value in layer.state_dict().items():
                state[f'{prefix}data/{layer.name}/{key}'] = np.asarray(value)
    return state


def _load_layer_states(net, prefix, state):
    for layer in net.layers:
        key = f'{prefix}rng/{layer.name}'
        if key in state:
            layer.rng.bit_generator.state = json.loads(str(state[key]))
        if hasattr(layer, 'load_state_dict'):
            data = f'{prefix}data/{layer.name}/'
            layer.load_state_dict({k[len(data):]: v for k, v in state.items() if k.startswith(data)})


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


SOLVERS = {'SGD': SGDSolver, 'Nesterov': NesterovSolver, 'Adam': AdamSolver}
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


# -- weights and snapshot files ---------------------------------------------

def _param_keys(net):
    """``layer/k`` -> Blob, in net order."""
    return {f'{name}/{k}': blob for name, blobs in net.params.items() for k, blob in enumerate(blobs)}


def net_weights(net):
    return {key: blob.data for key, blob in _param_keys(net).items()}


def _per_blob(net, arena_array):
    """Views of an arena-shaped array (solver history), keyed like the weights."""
    out = {}
    for i in net.param_layers:
        start = net.param_slice(i).start
        for k, blob in enumerate(net.layers[i].blobs):
            out[f'{net.layers[i].name}/{k}'] = arena_array[start:start + blob.count].reshape(blob.shape)
            start += blob.count
    return out


def _copy_checked(targets, arrays, path, strict=True):
    """Copy ``arrays`` into ``targets`` by key, refusing any name or shape mismatch."""
    problems = []
    for key, target in targets.items():
        if key not in arrays:
            if strict:
                problems.append(f'{key}: missing from the file (net has shape {target.shape})')
        elif arrays[key].shape != target.shape:
            problems.append(f'{key}: file has shape {arrays[key].shape}, net has {target.shape}')
    if strict:
        problems += [f'{key}: in the file, not in the net' for key in arrays if key not in targets]
    if problems:
        raise SolverError(f'{path}: parameters do not match this net:\n  ' + '\n  '.join(problems))
    for key, target in targets.items():
        if key in arrays:
            target[...] = arrays[key]


def load_weights(net, path, strict=False):
    """Copy weights saved by ``snapshot`` into ``net`` by layer name.

    ``strict`` (resuming) refuses any difference; otherwise (fine-tuning,
    testing) layers absent from the file keep their initial values, but a
    shape mismatch is always refused.
    """
    arrays = _load_npz(path)
    _copy_checked({k: b.data for k, b in _param_keys(net).items()}, arrays, path, strict)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise SolverError(f'{path}: no such snapshot file') from None
    except (ValueError, OSError) as e:
        raise SolverError(f'{path}: not a readable snapshot ({e})') from None


def _atomic_savez(path, arrays):
    """Write to a temporary file in the same folder, then rename: never a torn file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix='.npz')
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
