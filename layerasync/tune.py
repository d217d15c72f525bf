"""``layerasync tune``: choose the communicator's settings for a net, ranks and link by measurement.

    mpiexec -n 2 layerasync tune --model alexnet-mini --batch 64 --out tuned.json
    mpiexec -n 2 layerasync train --solver alexnet-mini --settings tuned.json

A coordinate search over what the trainer's flags set, starting from the
defaults: for each of scheduler, chunk bytes, in-flight count, fusion bytes
and progress engine in turn, every value is timed (a short run of the
strategy, the slowest rank's time) with the others at the best found so far,
and the fastest is kept if it beats the current best by more than
``margin`` (the noise of a shared machine; otherwise the current value stays).
Then the chosen settings and the defaults are timed side by side in
alternating rounds, and the defaults are written if the chosen ones are not
faster there. Every rank takes the same decisions (the times are maxima over
the ranks). The log says what was tried, what it took and why each choice
was made; the file holds the settings (the keys of ``comm.DEFAULTS`` that the
search sets) and what was measured.

How long: about (number of trials + 2 × rounds) × (iterations + 2) iterations
of the net; the default space is 15 trials (printed at the start).
"""
import json
import time

import numpy as np

from .comm import DEFAULTS, SCHEDULERS, scheduler_name

__all__ = ['SPACE', 'tune', 'load_settings', 'add_commands']

# The values tried per setting (the trainer's flag names), in search order.
SPACE = (
    ('scheduler', ('auto', 'fifo', 'priority')),
    ('chunk_bytes', (1 << 18, 1 << 20, 1 << 22, 0)),
    ('in_flight', (None, 1, 2, 4, 8)),
    ('fusion_bytes', (0, 1 << 16, 1 << 20)),
    ('progress', ('poll', 'thread')),
)
# Flag name -> the communicator's keyword and the value it takes.
_KEYWORD = {'scheduler': ('priority', lambda v: SCHEDULERS[v]),
            'chunk_bytes': ('chunk_bytes', int), 'in_flight': ('max_in_flight', lambda v: v),
            'fusion_bytes': ('fusion_bytes', int), 'progress': ('progress', str)}


def defaults():
    """The trainer's defaults, by flag name."""
    return {'scheduler': scheduler_name(DEFAULTS['priority']),
            'chunk_bytes': DEFAULTS['chunk_bytes'], 'in_flight': DEFAULTS['max_in_flight'],
            'fusion_bytes': DEFAULTS['fusion_bytes'], 'progress': DEFAULTS['progress']}


def comm_settings(flags):
    """Flag-named settings -> the communicator's keyword arguments."""
    return {_KEYWORD[k][0]: _KEYWORD[k][1](v) for k, v in flags.items()}


def _describe(flags):
    return ', '.join(f'{k}={v}' for k, v in flags.items())


def tune(world, model, batch=None, strategy='async-layerwise', iterations=10, rounds=3,
         margin=0.02, remove=(), log=print, replay=None, space=SPACE, compress=None):
    """The search (collective over ``world``); returns the record written to the
    settings file: ``settings`` (flag-named), the trials and the final comparison."""
    from .bench import _time_iterations, _time_row, make_solver
    from .comm import job
    from .comm.control import Control
    from .strategies import get_strategy
    control = Control(world)
    solver = make_solver(model, batch, world.Get_rank(), world.Get_size(), remove=remove)
    if replay is not None:
        replay(solver.net)
    trials = []

    def measure(flags, n=iterations):
        s = get_strategy(strategy, solver, world, compress=compress, **comm_settings(flags))
        try:
            seconds, _ = _time_row(s, n, _time_iterations, control.barrier)
        finally:
            s.close()
        slowest = np.array([seconds])
        job.max_over(world, slowest)
        return float(slowest[0])

    try:
        count = sum(len(values) for _, values in space)
        log(f'tuning {strategy} on {model} (batch {solver.net.batch_size} per rank, '
            f'{world.Get_size()} ranks): {count} trials of {iterations} iterations, then the '
            f'chosen settings against the defaults in {rounds} rounds')
        started = time.perf_counter()
        measure(defaults(), 2)   # warm-up: Numba, MPI connections, caches
        best = defaults()
        best_time = measure(best)
        log(f'defaults ({_describe(best)}): {1e3 * best_time:.1f} ms')
        trials.append({'settings': dict(best), 'ms': 1e3 * best_time})
        for name, values in space:
            timed = {}
            for value in values:
                if value == best[name]:
                    continue
                flags = {**best, name: value}
                timed[value] = measure(flags)
                trials.append({'settings': flags, 'ms': 1e3 * timed[value]})
                log(f'  {name}={value}: {1e3 * timed[value]:.1f} ms')
            if not timed:
                continue
            value = min(timed, key=timed.get)
            if timed[value] < best_time * (1 - margin):
                log(f'{name}: {value} ({1e3 * timed[value]:.1f} ms) beats {best[name]} '
                    f'({1e3 * best_time:.1f} ms) by more than {margin:.0%}: take it')
                best, best_time = {**best, name: value}, timed[value]
            else:
                log(f'{name}: keep {best[name]} ({1e3 * best_time:.1f} ms); the best other, '
                    f'{value}, took {1e3 * timed[value]:.1f} ms')
        chosen, default = [], []
        for r in range(rounds):   # side by side, alternating which goes first
            pair = [(best, chosen), (defaults(), default)]
            for flags, into in (pair if r % 2 == 0 else pair[::-1]):
                into.append(measure(flags))
        med_chosen, med_default = float(np.median(chosen)), float(np.median(default))
        keep = best if med_chosen < med_default else defaults()
        log(f'side by side, median of {rounds}: chosen {1e3 * med_chosen:.1f} ms, defaults '
            f'{1e3 * med_default:.1f} ms (ratio {med_chosen / med_default:.3f}); writing the '
            f"{'chosen settings' if keep is best else 'defaults'}: {_describe(keep)}")
        log(f'tuning took {time.perf_counter() - started:.0f} s')
        return {'model': model, 'batch': solver.net.batch_size, 'ranks': world.Get_size(),
                'strategy': strategy, 'compress': compress, 'settings': keep,
                'chosen_ms': 1e3 * med_chosen, 'defaults_ms': 1e3 * med_default, 'trials': trials}
    finally:
        solver.close()


def load_settings(path):
    """The flag-named settings of a file ``tune`` wrote; ValueError naming the file
    and what is wrong with it."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'{path}: not a settings file written by layerasync tune ({e})') from None
    settings = record.get('settings') if isinstance(record, dict) else None
    known = dict(SPACE)
    if not isinstance(settings, dict) or set(settings) - set(known):
        raise ValueError(f'{path}: not a settings file written by layerasync tune (expected '
                         f"'settings' with keys among {', '.join(known)})")
    return settings


def add_commands(subparsers, mpi):
    from ._args import add_compute_arguments, compression, count, layer_types, replayed_compute
    p = subparsers.add_parser('tune', help='choose communication settings by measurement '
                                           '(run under mpirun)')
    p.add_argument('--model', required=True, help='net prototxt or zoo name (synthetic data)')
    p.add_argument('--batch', type=count(1), help="batch per rank (default: the prototxt's)")
    p.add_argument('--strategy', default='async-layerwise',
                   help='the strategy to tune for (default async-layerwise)')
    p.add_argument('--remove-layers', type=layer_types, default=(), metavar='TYPE[,TYPE]',
                   help='take the layers of these types out of the net')
    p.add_argument('--iterations', type=count(1), default=10, help='timed iterations per trial')
    p.add_argument('--rounds', type=count(1), default=3,
                   help='rounds of the final comparison with the defaults')
    p.add_argument('--margin', type=float, default=0.02,
                   help='a value must be this much faster to replace the current one (0.02)')
    p.add_argument('--out', required=True, metavar='FILE.json',
                   help='the settings file to write (train and bench read it with --settings)')
    p.add_argument('--compress', type=compression, metavar='fp16|bf16|topk:RATIO|powersgd:RANK',
                   help='tune under this gradient compression (as train\'s --compress)')
    p.add_argument('--mpi', action='store_true', help='use MPI even if no launcher is detected')
    p.set_defaults(progress='poll')   # MPI starts without its own progress thread
    add_compute_arguments(p)

    def run(args):
        world = mpi(args, required='tune times the strategy over MPI: run it under mpirun')
        rank = world.Get_rank()
        say = print if rank == 0 else (lambda *a: None)
        record = tune(world, args.model, args.batch, args.strategy, args.iterations, args.rounds,
                      args.margin, args.remove_layers, log=say, compress=args.compress,
                      replay=lambda net: replayed_compute(args, net, world, log=say))
        if rank == 0:
            with open(args.out, 'w') as f:
                json.dump(record, f, indent=1)
            print(f'written to {args.out}')
    p.set_defaults(run=run)
