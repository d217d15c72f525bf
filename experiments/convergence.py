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
runs delayed:2 with momentum 0.5 (``--set momentum=0.5``).

The default is the embedded digits set (nothing to download).
"""
import argparse
import os
import subprocess
import sys

STRATEGIES = 'sync,layerwise,async-layerwise,delayed:1,delayed:2,delayed:3'


def run(entry, args, metrics):
    strategy, *overrides = entry.split('+')
    from layerasync.launch.mpi import find_program
    mpiexec = find_program(['mpiexec']) or 'mpiexec'
    command = [mpiexec, '-n', str(args.ranks), sys.executable, '-m', 'layerasync', 'train',
               '--solver', args.solver, '--strategy', strategy, '--metrics', metrics,
               *[a for o in overrides for a in ('--set', o)],
               '--no-progress', '--quiet', '--set', f'test_interval={args.test_interval}',
               '--set', 'snapshot=0', '--set', 'snapshot_after_train=false',
               '--set', f'max_iter={args.max_iter}', *args.extra]
    if args.ranks == 1:
        command = command[3:]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    subprocess.run(command, check=True, env=env)


def summarise(strategy, path, target):
    from layerasync.plot import load_records
    recs = [r for r in load_records(path) if r.get('rank', 0) == 0]
    tests = [r for r in recs if 'test/accuracy' in r]
    rates = [r['iters_per_s'] for r in recs if r.get('iters_per_s')]
    reached = next((r for r in tests if r['test/accuracy'] >= target), None)
    return {'strategy': strategy, 'final_accuracy': tests[-1]['test/accuracy'],
            'best_accuracy': max(r['test/accuracy'] for r in tests),
            'wall_s': tests[-1]['time'], 'iters_per_s': sum(rates) / len(rates) if rates else None,
            'iter_to_target': reached['iter'] if reached else None,
            'time_to_target': reached['time'] if reached else None}


def table(rows, target):
    lines = [f'| strategy | final acc. | best acc. | wall s | iter/s | iterations to {target:.0%} '
             f'| seconds to {target:.0%} |', '|---|---|---|---|---|---|---|']
    for r in rows:
        def f(v, fmt):
            return format(v, fmt) if v is not None else 'not reached'
        lines.append(f"| `{r['strategy']}` | {r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} | "
                     f"{r['wall_s']:.1f} | {f(r['iters_per_s'], '.1f')} | {f(r['iter_to_target'], 'd')} "
                     f"| {f(r['time_to_target'], '.1f')} |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--solver', default='digits')
    p.add_argument('--strategies', default=STRATEGIES)
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
    paths, rows = [], []
    for strategy in args.strategies.split(','):
        path = os.path.join(args.out, strategy.replace(':', '').replace('=', '') + '.jsonl')
        if os.path.exists(path):
            os.remove(path)
        run(strategy, args, path)
        paths.append(path)
        rows.append(summarise(strategy, path, args.target))
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
