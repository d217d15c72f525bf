"""The training loop: data -> net -> strategy -> solver -> metrics / snapshots.

It follows Caffe's ``Solver::Step``: test at ``test_interval`` (and before
the first iteration if ``test_initialization``), ``iter_size`` passes per
iteration, display every ``display`` iterations with the loss averaged over
``average_loss`` iterations, snapshot every ``snapshot`` iterations and after
training. What happens to the gradients is the strategy's business.

Only rank 0 writes the log and the progress bar; every rank may write
metrics (each line carries the rank). A non-finite loss stops training with
the iteration and the first layer that produced a non-finite value; snapshots
already written stay on disk.
"""
import dataclasses
import json
import math
import sys
import time
from collections import deque

import numpy as np

from .signals import SNAPSHOT, STOP, Interrupted, stopping_signal
from .snapshot import last_good

__all__ = ['Trainer', 'TrainingDiverged', 'Log']


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Log:
    """Caffe-style log lines on rank 0, kept clear of the progress bar."""

    def __init__(self, rank=0, stream=None, quiet=False):
        self.enabled = rank == 0 and not quiet
        self.stream = stream or sys.stdout
        self.bar = None

    def __call__(self, message):
        if not self.enabled:
            return
        now = time.time()
        stamp = time.strftime('%m%d %H:%M:%S', time.localtime(now)) + f'.{int(now % 1 * 1e3):03d}'
        line = f'I{stamp} {message}'
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


class Trainer:
    """Runs a solver's iterations under a strategy.

    ``metrics``: a JSON Lines path (one record per display and per test);
    ``progress``: show a bar (default: when stderr is a terminal, rank 0);
    ``signals``: a ``signals.SignalEffects`` whose requests are acted on at
    iteration boundaries, the same one on every rank (see ``_requests``);
    ``watch``: the stall watchdog (``comm.stall.StallWatch``), told each
    boundary so that its default limit follows the slowest iteration.
    """

    def __init__(self, solver, strategy, metrics=None, log=None, progress=None, trace=None,
                 signals=None, watch=None):
        self.solver, self.strategy = solver, strategy
        self.control = control = strategy.control   # None in one process
        self.rank = control.rank if control is not None else 0
        self.size = control.size if control is not None else 1
        self.log = log or Log(self.rank)
        self.trace = trace
        self.signals, self.vote, self.watch = signals, None, watch
        self.metrics_file = open(metrics, 'a') if metrics else None
        if progress is None:
            progress = sys.stderr.isatty()
        self.progress = progress and self.rank == 0
        self.start_time = None
        self.last_snapshot = None
        self.snapshots = []   # (iteration, solver-state path): this run's, and the one it resumed
        self.test_results = []

    # -- the loop ---------------------------------------------------------
    def run(self, max_iter=None):
        """Train until ``max_iter`` (default: the solver's); returns the last test results.

        NumPy's floating-point warnings are off meanwhile: a non-finite loss
        is reported by the divergence check, with the iteration and the first
        layer whose output is not finite."""
        with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
            return self._run(max_iter)

    def _run(self, max_iter):
        s, p = self.solver, self.solver.param
        max_iter = p.max_iter if max_iter is None else max_iter
        if max_iter is None:
            raise ValueError(f'{p.where}: max_iter is required to train')
        self.start_time = time.perf_counter()
        self.strategy.start(self.context(max_iter))
        s.net.set_progress(self.strategy.progress_hook())
        bar = self._open_bar(s.iter, max_iter)
        self.losses = deque(maxlen=max(1, p.average_loss))
        self.window = (time.perf_counter(), s.iter)   # the display window's start
        self.log(f'Solving {s.net.name or "net"} ({s.type}, strategy {self.strategy.name}, '
                 f'{self.size} rank{"s" if self.size > 1 else ""}, {s.net.arena.count:,} parameters)')
        hooks = None
        if self.trace is not None:
            from .trace import TracedHooks
            hooks = TracedHooks(self.strategy, s.net, self.trace)
            self.trace.start()
        if self.signals is not None and self.size > 1:
            from .comm.vote import Vote
            self.vote = Vote(self.control.comm)
        try:
            while s.iter < max_iter:
                if self.watch is not None:
                    self.watch.boundary(s.iter)
                if self._due(p.test_interval) and (s.iter > 0 or p.test_initialization):
                    self.test_all()
                if self.trace is not None:
                    self.trace.iteration = s.iter
                s.step(1, self.strategy, hooks, on_loss=self._on_loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f'{np.mean(self.losses):.4f}', refresh=False)
                snapshotted = p.snapshot and s.iter % p.snapshot == 0
                if snapshotted:
                    self.snapshot()
                requests = self._requests()
                if requests & SNAPSHOT and not snapshotted:
                    self.snapshot()
                if requests & STOP:
                    self._close_vote()
                    self.log(f'Iteration {s.iter}: stopping at a signal\'s request')
                    raise Interrupted(stopping_signal(requests), s.iter, self.last_snapshot)
            self._close_vote()
            self.strategy.finish()
            if p.snapshot_after_train and p.snapshot_prefix and (
                    not p.snapshot or s.iter % p.snapshot != 0):
                self.snapshot()
            if self._due(p.test_interval):
                self.test_all()
        finally:
            s.net.set_progress(None)
            if bar is not None:
                bar.close()
                self.log.bar = None
            if self.metrics_file is not None:
                self.metrics_file.flush()
        self.log('Optimization Done.')
        return self.test_results[-1] if self.test_results else {}

    def context(self, max_iter):
        """What this trainer adds to the ranks' start-up agreement: everything
        of its own that decides when it makes collective calls (the solver's
        schedule fields are the strategy's to describe)."""
        s = self.solver
        data = dataclasses.asdict(s.data_options)
        del data['rank']   # the one setting that differs between ranks
        return [f'trainer: resume at iteration {s.iter}', f'trainer: train until iteration {max_iter}',
                f'trainer: seed {s.seed}', f'trainer: traced {self.trace is not None}',
                *(f'trainer: data {key} = {value!r}' for key, value in data.items())]

    def _on_loss(self, loss):
        """Before the update: stop on divergence, display the averaged loss."""
        if not math.isfinite(loss):
            raise TrainingDiverged(self._divergence(loss))
        self.losses.append(loss)
        if self._due(self.solver.param.display):
            now, it = time.perf_counter(), self.solver.iter
            start, start_iter = self.window
            self._display(float(np.mean(self.losses)), (it - start_iter) / (now - start)
                          if it > start_iter else None)
            self.window = (now, it)

    def _requests(self):
        """The signal requests to act on at this boundary: this process's own
        in one process; under MPI the OR over ranks of the previous boundary's
        (``comm.vote``), so every rank acts at the same boundary."""
        if self.signals is None:
            return 0
        mine = self.signals.take()
        return mine if self.vote is None else self.vote.vote(mine)

    def _close_vote(self):
        if self.vote is not None:
            self.vote.close()
            self.vote = None

    def _due(self, interval):
        return bool(interval) and self.solver.iter % interval == 0

    def _open_bar(self, start, stop):
        if not self.progress:
            return None
        from tqdm import tqdm
        bar = tqdm(total=stop, initial=start, unit='it', dynamic_ncols=True, leave=False)
        self.log.bar = bar
        return bar

    def elapsed(self):
        return time.perf_counter() - self.start_time

    # -- reporting ----------------------------------------------------------
    def _display(self, loss, rate):
        s = self.solver
        rate_text = f' ({rate:.2f} iter/s)' if rate else ''
        self.log(f'Iteration {s.iter}{rate_text}, loss = {loss:.6g}')
        for k, (name, value, weight) in enumerate(self._outputs(s.net)):
            self.log(f'    Train net output #{k}: {name} = {_fmt(value)}'
                     + (f' (* {weight:g} = {_fmt(value * weight)} loss)' if weight else ''))
        self.log(f'Iteration {s.iter}, lr = {s.learning_rate():.6g}')
        extra = self.strategy.metrics()
        for name, value in extra.items():
            self.log(f'Iteration {s.iter}, {self.strategy.name} {name} = {value}')
        self.write_metrics(iter=s.iter, loss=loss, lr=s.learning_rate(), iters_per_s=rate, **extra)

    @staticmethod
    def _outputs(net, values=None):
        weights = {name: w for names, ws in zip(net.top_names, net.loss_weights)
                   for name, w in zip(names, ws)}
        for name in net.outputs:
            value = values[name] if values is not None else net.blobs[name].data
            yield name, np.asarray(value, np.float64), weights.get(name, 0.0)

    def test_all(self):
        """Run every test net on the current weights (the same on every rank)."""
        s = self.solver
        self.strategy.finish()
        self._average_statistics()
        results = {}
        for k, net in enumerate(s.test_nets):
            self.log(f'Iteration {s.iter}, Testing net (#{k})')
            means = s.test(k)
            for j, (name, value, weight) in enumerate(self._outputs(net, means)):
                self.log(f'    Test net output #{j}: {name} = {_fmt(value)}'
                         + (f' (* {weight:g} = {_fmt(value * weight)} loss)' if weight else ''))
                results[f'test{k}/{name}' if k else f'test/{name}'] = _plain(value)
        self.test_results.append(results)
        self.write_metrics(iter=s.iter, **results)
        return results

    def write_metrics(self, **record):
        if self.metrics_file is None:
            return
        record = {'iter': record.pop('iter'), 'time': round(self.elapsed(), 6), 'rank': self.rank,
                  **{k: v for k, v in record.items() if v is not None}}
        self.metrics_file.write(json.dumps(record) + '\n')
        self.metrics_file.flush()

    # -- snapshots and failures ----------------------------------------------
    def _average_statistics(self):
        """Average what each rank accumulates on its own (BatchNorm's running
        statistics: parameters with lr_mult 0) so tests and snapshots see the
        statistics of all the data. Training never reads them, so the iterates
        are unchanged; identical values average to themselves exactly."""
        if self.control is None or self.size == 1:
            return
        net = self.solver.net
        for i in net.param_layers:
            for blob, spec in zip(net.layers[i].blobs, net.param_specs[i]):
                if spec.lr_mult == 0:
                    blob.data[...] = self.control.allreduce_mean(blob.data)

    def snapshot(self):
        """Drain the strategy, then rank 0 writes weights and solver state."""
        self.strategy.finish()
        self._average_statistics()
        history = self.strategy.gather_state()
        s = self.solver
        prefix = s.param.snapshot_prefix or s.net.name or 'snapshot'
        if self.rank == 0:
            s.snapshot(prefix, extra=self.strategy.state_dict(), history=history)
            self.log(f'Snapshotting solver state to {s.snapshot_path(prefix)}')
        if self.control is not None and self.size > 1:
            self.control.barrier()   # the files exist before any rank goes on
        self.last_snapshot = s.snapshot_path(prefix)
        self.snapshots.append((s.iter, self.last_snapshot))

    def _divergence(self, loss):
        s = self.solver
        where = _first_non_finite(s.net)
        kept = ''
        if self.snapshots:
            good = last_good(self.snapshots, s.iter)
            kept = (f'; the last good snapshot is {good}' if good else
                    '; no snapshot written before this iteration is readable and finite')
        return (f'rank {self.rank}, iteration {s.iter}: the loss is {loss} (not finite); '
                f'{where}{kept}. Lower base_lr or check the input data.')


def _first_non_finite(net):
    for layer, tops in zip(net.layers, net.top_vecs):
        for blob in tops:
            if not np.isfinite(blob.data).all():
                return (f"first non-finite value in the output '{blob.name}' of layer "
                        f"'{layer.name}' ({layer.type})")
    for i in reversed(net.param_layers):
        layer = net.layers[i]
        for k, blob in enumerate(layer.blobs):
            if not np.isfinite(blob.diff).all():
                return f"first non-finite gradient in parameter {k} of layer '{layer.name}' ({layer.type})"
    for i in net.param_layers:
        layer = net.layers[i]
        for k, blob in enumerate(layer.blobs):
            if not np.isfinite(blob.data).all():
                return f"parameter {k} of layer '{layer.name}' ({layer.type}) is not finite"
    return 'no layer output is non-finite (the loss layer itself overflowed)'


def _fmt(value):
    value = np.asarray(value)
    if value.size == 1:
        return f'{float(value.reshape(-1)[0]):.6g}'
    return np.array2string(value, precision=4, separator=' ')


def _plain(value):
    value = np.asarray(value)
    return float(value.reshape(-1)[0]) if value.size == 1 else value.tolist()

