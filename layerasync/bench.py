"""``layerasync bench``: every strategy on the same model, ranks and data, in one run.

    mpiexec -n 2 layerasync bench --model lenet --batch 64 --csv bench.csv

Per rank, interleaved in rounds so that drift of a shared machine hits all
rows alike, it measures:

- ``compute``: forward + backward + update with no communication at all,
  while the other ranks do the same (so contention for cores and memory is
  that of a real run);
- ``comm``: the allreduce of all gradients alone, through the same
  communicator settings (buckets, chunks, in-flight limit, progress engine);
- each strategy's iteration time.

With ``--servers S`` the last S ranks are parameter servers: the ``ps-sync``
and ``ps-async`` rows use the whole job, every other row runs on the
remaining P - S (worker) ranks alone, so all rows train the same number of
workers and the PS rows cost S extra ranks::

    mpiexec -n 3 layerasync bench --model lenet --batch 64 --servers 1

``overlap`` is the hidden share of communication,
(compute + comm - iteration) / comm, clipped to [0, 1]; ``bound`` is the
best any overlap can do, max(compute, comm). Times are medians over rounds;
``spread`` is (max - min) / median, the run-to-run noise. Numbers are the
maximum over ranks (the slowest rank sets the pace). ``overlap`` and
``bound`` refer to the allreduce, so the PS rows leave them empty.

The bench always runs over MPI, at one rank too (the communicator's own cost);
it splits the job and waits through ``layerasync.comm.job``, and the PS rows
run through ``layerasync.ps.run``. Without mpi4py the command says so.
"""
import csv
import statistics
import time

import numpy as np

from . import models, proto, ps, schema
from ._args import add_compute_arguments, count, layer_types, replayed_compute, seconds
from .net import load_net_param, remove_layers, set_batch_size
from .strategies import DEFAULT_STRATEGIES, parse_strategy

__all__ = ['run_bench', 'make_solver', 'format_rows', 'write_csv', 'add_commands']


def make_solver(model, batch, rank, size, seed=1, prefetch=True, remove=()):
    """A fixed-rate SGD solver for net ``model`` (a file or zoo name) at ``batch``
    per rank (None: the prototxt's), reading the synthetic shard of ``rank`` of
    ``size``; without its layers of the types in ``remove`` (``net.remove_layers``)."""
    from .data import DataOptions
    from .solver import get_solver
    net = load_net_param(models.resolve(model, 'net'))
    if batch:
        set_batch_size(net, batch)
    if remove:
        remove_layers(net, remove)
    param = proto.parse('base_lr: 0.001 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                        f'random_seed: {seed}', schema.SolverParameter)
    param.net_param = net
    return get_solver(param, data=DataOptions(rank=rank, world_size=size, synthetic=True,
                                              prefetch=prefetch))


def run_bench(world, model, batch=None, strategies=','.join(DEFAULT_STRATEGIES), iterations=30,
              warmup=5, rounds=3, log=print, servers=0, staleness=None, stall_timeout=None,
              remove=(), replay=None, **comm_settings):
    """Rows of measurements (dicts), identical on every rank (collective over ``world``).

    ``strategies``: comma-separated names, as ``--strategy`` takes them.
    ``servers``: the last ``servers`` ranks serve the ``ps-*`` rows and sit out the others.
    Every row runs under the stall watchdog, as training does (``stall_timeout``:
    its limit, None for the default), so its cost is in the times. ``remove``:
    layer types to take out of the net (``net.remove_layers``). ``replay``:
    ``replay(net)`` applies compute replay to the net (``_args.replayed_compute``).
    """
    from .comm import job, stall
    from .comm.control import Control
    from .strategies import get_strategy
    names = [s for s in strategies.split(',') if s]
    for name in names:
        parse_strategy(name)
    if any(n in ps.NAMES for n in names) and not servers:
        raise ValueError('the ps-* rows need parameter servers: give --servers S (S >= 1)')
    serving, workers, rank = False, world.Get_size(), world.Get_rank()
    if servers:
        place = ps.role(world, servers)
        serving, workers, rank = place.serving, place.workers, 0 if place.serving else place.index
    group = job.split(world, int(serving)) if servers else world
    control = Control(group)
    watch = stall.StallWatch(world, stall_timeout)
    stall.install(watch)
    solver = make_solver(model, batch, rank, workers, remove=remove)
    if replay is not None:
        replay(solver.net)
    keys = ['compute', 'comm'] + names
    samples = {key: [] for key in keys}
    sent = {}   # row -> bytes this rank sent per iteration (ring-equivalent), where known
    try:
        for r in range(rounds + 1):   # round 0 warms up (Numba, caches, MPI connections)
            n = warmup if r == 0 else iterations
            timings = {}
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                if key in ps.NAMES:
                    job.barrier(world)   # the servers wait for the workers here, asleep
                    seconds = ps.run(world, key, solver,
                                     lambda strategy: _time_row(strategy, n, _time_iterations,
                                                                control.barrier),
                                     servers, staleness if key == 'ps-async' else None)
                    if not serving:
                        timings[key], sent[key] = seconds
                    continue
                if serving:
                    continue
                # A fresh strategy per row: each owns its communicator and buffers.
                strategy = get_strategy('sync' if key in ('compute', 'comm') else key, solver,
                                        None if key == 'compute' else group,
                                        **({} if key == 'compute' else comm_settings))
                try:
                    timings[key], sent[key] = _time_row(
                        strategy, n, _time_allreduce if key == 'comm' else _time_iterations,
                        control.barrier)
                finally:
                    strategy.close()
            if r > 0:
                slowest = np.array([timings.get(k, 0.0) for k in keys])
                job.max_over(world, slowest)   # the servers sleep while they wait
                for key, value in zip(keys, slowest):
                    samples[key].append(float(value))
                log(f'round {r}/{rounds}: ' + ', '.join(
                    f'{k} {1e3 * v:.1f} ms' for k, v in zip(keys, slowest)))
    finally:
        solver.close()
        stall.uninstall()
        watch.close()
        if servers:
            group.Free()
    return _rows(samples, names, model, solver, workers, servers, comm_settings, sent)


def _time_row(strategy, iterations, measure, barrier):
    """Start ``strategy`` and time ``iterations`` of ``measure`` under it (after
    two untimed ones), as the trainer runs: with its progress hook set.
    ``barrier`` (over the timed ranks) aligns them before each timing.
    Returns (seconds per iteration, bytes sent per iteration or None where the
    strategy does not count them)."""
    net = strategy.solver.net
    try:
        strategy.start()
        net.set_progress(strategy.progress_hook())
        measure(strategy, 2, barrier)
        before = _sent_bytes(strategy)
        seconds = measure(strategy, iterations, barrier)
        after = _sent_bytes(strategy)
        return seconds, None if after is None else (after - before) / iterations
    finally:
        net.set_progress(None)


def _sent_bytes(strategy):
    """What ``strategy``'s gradient communicator has sent so far (None: it has none)."""
    return getattr(strategy.comm, 'sent_bytes', None) if strategy.comm is not None else None


def _time_iterations(strategy, iterations, barrier):
    """Seconds per iteration of the trainer's iterations (``Solver.step``) under ``strategy``."""
    barrier()
    start = time.perf_counter()
    strategy.solver.step(iterations, strategy)
    strategy.finish()
    return (time.perf_counter() - start) / iterations


def _time_allreduce(strategy, iterations, barrier):
    """Seconds per allreduce of all gradients through ``strategy``'s communicator."""
    barrier()
    start = time.perf_counter()
    for _ in range(iterations):
        strategy.post_all()
        strategy.comm.wait_all()
    return (time.perf_counter() - start) / iterations


def _rows(samples, names, model, solver, size, servers, comm_settings, sent=None):
    med = {k: statistics.median(v) for k, v in samples.items()}
    compute, comm = med['compute'], med['comm']
    rows = []
    for key in ['compute', 'comm'] + names:
        t = med[key]
        row = {'model': model, 'batch': solver.net.batch_size,
               'ranks': size, 'servers': servers if key in ps.NAMES else 0,
               'row': key, 'ms_per_iter': 1e3 * t, 'iters_per_s': 1 / t,
               'spread': (max(samples[key]) - min(samples[key])) / t,
               'compute_ms': 1e3 * compute, 'comm_ms': 1e3 * comm,
               'sent_mb': '' if (sent or {}).get(key) is None else sent[key] / 1e6,
               'overlap': '', 'vs_bound': '', 'vs_sync': ''}
        if key in names and key not in ps.NAMES:
            row['overlap'] = min(1.0, max(0.0, (compute + comm - t) / comm)) if comm > 0 else ''
            row['vs_bound'] = t / max(compute, comm)
        if key in names:
            row['vs_sync'] = t / med['sync'] if 'sync' in med else ''
        rows.append({**row, **comm_settings})
    return rows


def format_rows(rows):
    head = (f"{'':<20} {'ms/iter':>9} {'iter/s':>8} {'spread':>7} {'overlap':>8} {'/bound':>7} "
            f"{'/sync':>6} {'MB sent':>8}")
    lines = [head]
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if r[key] != '' else ''
        lines.append(f"{r['row']:<20} {r['ms_per_iter']:>9.2f} {r['iters_per_s']:>8.2f} "
                     f"{r['spread']:>7.1%} {f('overlap', '.0%'):>8} {f('vs_bound', '.3f'):>7} "
                     f"{f('vs_sync', '.3f'):>6} {f('sent_mb', '.2f'):>8}")
    r = rows[0]
    lines.append(f"compute-only {r['compute_ms']:.2f} ms, allreduce of all gradients alone "
                 f"{r['comm_ms']:.2f} ms; {r['ranks']} ranks, batch {r['batch']} per rank; "
                 'MB sent: per rank and iteration, as the ring algorithms send')
    servers = max(row['servers'] for row in rows)
    if servers:
        lines.append(f'the ps-* rows train the same {r["ranks"]} workers on {servers} more '
                     f'rank(s), the parameter server(s)')
    return '\n'.join(lines)


def write_csv(rows, path):
    """Write ``rows`` (dicts with the same keys, at least one) to ``path`` as CSV with a
    header; the bench's table, and every other table the project writes."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def add_commands(subparsers, comm_arguments, comm_settings, mpi):
    p = subparsers.add_parser('bench', help='all strategies side by side (run under mpirun)')
    p.add_argument('--model', required=True, help='net prototxt or zoo name (synthetic data)')
    p.add_argument('--batch', type=count(1), help='batch per rank (default: the prototxt\'s)')
    p.add_argument('--remove-layers', type=layer_types, default=(), metavar='TYPE[,TYPE]',
                   help='take the layers of these types out of the net (e.g. LRN: PyTorch\'s '
                        'is slow, so compare without it); each must keep its input\'s shape')
    p.add_argument('--strategies', help=f"comma-separated; default: {','.join(DEFAULT_STRATEGIES)}"
                   f", and with --servers also {','.join(ps.NAMES)}")
    p.add_argument('--servers', type=count(0), default=0, metavar='S',
                   help='the last S ranks serve the ps-* rows; the other rows run without them')
    p.add_argument('--staleness', type=count(0), metavar='S', help='staleness bound of ps-async')
    p.add_argument('--iterations', type=count(1), default=30, help='timed iterations per row and round')
    p.add_argument('--warmup', type=count(0), default=5)
    p.add_argument('--rounds', type=count(1), default=3)
    p.add_argument('--csv', metavar='FILE', help='write the table as CSV')
    p.add_argument('--stall-timeout', type=seconds, metavar='SECONDS',
                   help='as for train: end the job when a rank waits longer than this '
                        '(default 120 s)')
    add_compute_arguments(p)
    comm_arguments(p)

    def run(args):
        world = mpi(args, required='`layerasync time --model M` times the net in one '
                                   'process without MPI')
        rank = world.Get_rank()
        strategies = args.strategies or ','.join(
            DEFAULT_STRATEGIES + (ps.NAMES if args.servers else ()))
        rows = run_bench(world, args.model, args.batch, strategies, args.iterations,
                         args.warmup, args.rounds, log=print if rank == 0 else (lambda *a: None),
                         servers=args.servers, staleness=args.staleness,
                         stall_timeout=args.stall_timeout, remove=args.remove_layers,
                         replay=lambda net: replayed_compute(
                             args, net, world, log=print if rank == 0 else (lambda *a: None)),
                         **comm_settings(args))
        if rank == 0:
            print(format_rows(rows))
            if args.csv:
                write_csv(rows, args.csv)
                print(f'written to {args.csv}')
    p.set_defaults(run=run)
