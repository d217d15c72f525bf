"""Convergence and time-to-accuracy of every strategy, on real training runs.

    .venv/bin/python experiments/convergence.py --ranks 2 --out out/convergence

For each strategy it runs ``mpiexec -n RANKS layerasync train`` on the same
solver, seed and data, with test scores every ``--test-interval`` iterations,
and writes:

- ``<out>/<strategy>.jsonl``: the metrics of each run;
- ``<out>/accuracy_vs_time.png``, ``accuracy_vs_iter.png``, ``loss_vs_iter.png``;
- ``<out>/summary.md``: final accuracy, wall time, iterations/s, and the time
  and iterations to reach ``--target`` test accuracy.

A strategy may carry solver overrides after ``+``: ``delayed:2+momentum=0.5``
runs delayed:2 with momentum 0.5 (``--set momentum=0.5``); ``+compress=C``
runs it with ``--compress C`` (``sync+compress=topk:0.01``), and ``+outer=R``
belongs to the strategy (``local-sgd:4+outer=nesterov``).

The default set separates delay from the step size. With the solver's
learning rate lr and momentum m, and a lower momentum m' (``--low-momentum``,
default 0.5), it runs ``sync`` and ``delayed:K`` (``--delays``, default 1,2,3)
three ways:

- as the solver says (lr, m): ``layerwise`` and ``async-layerwise`` too;
- with momentum m' (lr, m'), which also shrinks the effective step
  lr / (1 - m) by (1 - m) / (1 - m');
- with lr (1 - m) / (1 - m') and momentum m: the effective step of the
  second set at the momentum of the first.

So ``delayed:K`` at m' against ``delayed:K`` at the scaled rate tells whether
lowering the momentum helps beyond lowering the effective step, and each
``sync`` row is the delay-free reference of its set. ``--strategies``
replaces the set.

A run that diverges (the train command stops on a loss that is not finite)
is kept: its table row says so, with the last test scores it reached.

The default is the embedded digits set (nothing to download).
"""
import argparse
import os
import re
import subprocess
import sys

SYNCHRONOUS = ('layerwise', 'async-layerwise')
# The train command's error when the loss stops being finite: "rank R, iteration N: the loss is ..."
DIVERGED = re.compile(r'iteration (\d+): the loss is \S+ \(not finite\)')


def default_strategies(solver, delays, low_momentum):
    """The three sets of runs described above, for ``solver`` (a file or zoo name)."""
    from layerasync import models
    from layerasync.solver import load_solver_param
    p = load_solver_param(models.resolve(solver, 'solver'))
    if not 0 <= low_momentum < p.momentum:
        raise SystemExit(f"{p.where_of('momentum')}: the solver's momentum is {p.momentum:g}; "
                         f'--low-momentum must be >= 0 and below it, got {low_momentum:g}')
    rate = p.base_lr * (1 - p.momentum) / (1 - low_momentum)
    runs = ['sync', *SYNCHRONOUS, *(f'delayed:{k}' for k in delays)]
    for override in (f'momentum={low_momentum:g}', f'base_lr={rate:g}'):
        runs += [f'{r}+{override}' for r in ['sync', *(f'delayed:{k}' for k in delays)]]
    return runs


def run(entry, args, metrics):
    """Train one entry; None if it ran to the end, else the iteration it diverged at."""
    strategy, *overrides = entry.split('+')
    options = []
    for o in overrides:
        if o.startswith('outer='):
            strategy += f'+{o}'
        elif o.startswith('compress='):
            options += ['--compress', o[len('compress='):]]
        else:
            options += ['--set', o]
    from layerasync.launch.mpi import find_program
    mpiexec = find_program(['mpiexec']) or 'mpiexec'
    command = [mpiexec, '-n', str(args.ranks), sys.executable, '-m', 'layerasync', 'train',
               '--solver', args.solver, '--strategy', strategy, '--metrics', metrics, *options,
               '--no-progress', '--quiet', '--set', f'test_interval={args.test_interval}',
               '--set', 'snapshot=0', '--set', 'snapshot_after_train=false',
               '--set', f'max_iter={args.max_iter}', *args.extra]
    if args.ranks == 1:
        command = command[3:]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    done = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode == 0:
        return None
    diverged = DIVERGED.search(done.stderr)
    if diverged is None:
        raise SystemExit(f'experiments/convergence.py: {entry} failed (exit status '
                         f'{done.returncode}): {" ".join(command)}')
    return int(diverged.group(1))


def summarise(strategy, path, target, diverged=None):
    """The table row of one run's metrics file (rank 0's records)."""
    from layerasync.plot import load_records
    recs = [r for r in load_records(path) if r.get('rank', 0) == 0]
    tests = [r for r in recs if 'test/accuracy' in r]
    if not tests:
        raise SystemExit(f'{path}: {strategy} wrote no test scores (diverged at iteration '
                         f'{diverged}, before the first test?); lower --test-interval')
    rates = [r['iters_per_s'] for r in recs if r.get('iters_per_s')]
    reached = next((r for r in tests if r['test/accuracy'] >= target), None)
    return {'strategy': strategy, 'diverged': diverged,
            'final_accuracy': tests[-1]['test/accuracy'], 'final_loss': tests[-1]['test/loss'],
            'best_accuracy': max(r['test/accuracy'] for r in tests),
            'wall_s': tests[-1]['time'], 'iters_per_s': sum(rates) / len(rates) if rates else None,
            'iter_to_target': reached['iter'] if reached else None,
            'time_to_target': reached['time'] if reached else None}


def table(rows, target):
    lines = [f'| strategy | final acc. | final test loss | best acc. | wall s | iter/s '
             f'| iterations to {target:.0%} | seconds to {target:.0%} |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        def f(v, fmt, missing='not reached'):
            return format(v, fmt) if v is not None else missing
        name = f"`{r['strategy']}`" + (f", diverged at {r['diverged']}"
                                       if r['diverged'] is not None else '')
        lines.append(f"| {name} | {r['final_accuracy']:.4f} | {r['final_loss']:.3f} | "
                     f"{r['best_accuracy']:.4f} | {r['wall_s']:.1f} | "
                     f"{f(r['iters_per_s'], '.1f', '–')} | {f(r['iter_to_target'], 'd')} "
                     f"| {f(r['time_to_target'], '.1f')} |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--solver', default='digits')
    p.add_argument('--strategies', help='comma-separated entries (default: the three sets above)')
    p.add_argument('--delays', default='1,2,3', help='K of the default delayed:K runs')
    p.add_argument('--low-momentum', type=float, default=0.5,
                   help="m' of the default set (default 0.5)")
    p.add_argument('--ranks', type=int, default=2)
    p.add_argument('--threads', type=int, default=1, help='BLAS threads per rank')
    p.add_argument('--max-iter', type=int, default=1000)
    p.add_argument('--test-interval', type=int, default=50)
    p.add_argument('--target', type=float, default=0.97)
    p.add_argument('--out', default='out/convergence')
    p.add_argument('extra', nargs='*', help='more train options, after --')
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from layerasync.plot import plot_metrics
    strategies = (args.strategies.split(',') if args.strategies else
                  default_strategies(args.solver, [int(k) for k in args.delays.split(',')],
                                     args.low_momentum))
    paths, rows = [], []
    for strategy in strategies:
        path = os.path.join(args.out, strategy.replace(':', '').replace('=', '') + '.jsonl')
        if os.path.exists(path):
            os.remove(path)
        diverged = run(strategy, args, path)
        paths.append(path)
        rows.append(summarise(strategy, path, args.target, diverged))
        print(table(rows[-1:], args.target).splitlines()[-1], flush=True)
    plot_metrics(paths, os.path.join(args.out, 'accuracy_vs_time.png'), x='time')
    plot_metrics(paths, os.path.join(args.out, 'accuracy_vs_iter.png'), x='iter')
    plot_metrics(paths, os.path.join(args.out, 'loss_vs_iter.png'), x='iter', y='loss')
    command = ' '.join(['.venv/bin/python', 'experiments/convergence.py'] + sys.argv[1:])
    with open(os.path.join(args.out, 'summary.md'), 'w') as f:
        f.write(f'`{command}` ({args.ranks} ranks, {args.threads} thread each, solver '
                f'{args.solver}, {args.max_iter} iterations)\n\n{table(rows, args.target)}\n')
    print(open(os.path.join(args.out, 'summary.md')).read())


if __name__ == '__main__':
    main()
