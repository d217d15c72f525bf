"""Two revisions of layerasync side by side: does a change slow training down?

    .venv/bin/python benchmarks/versions.py --before 9110cfc --after HEAD \\
        --model lenet --batch 64 --ranks 2 --rounds 5

Each revision is checked out into a temporary git worktree (removed at the
end). Rounds alternate the revisions (before, after; then after, before; ...)
so that drift of a shared machine hits both alike. A round of a revision is:

- ``layerasync bench`` for ``--strategies`` under ``mpiexec -n RANKS``
  (one bench round after its warm-up), ms per iteration of each row;
- ``layerasync train`` of the model's solver on synthetic data for
  ``--train-iterations``, the trainer's own iteration boundaries included
  (start-up agreement, signal vote, stall watchdog), ms per iteration over
  the display windows after the first.

Printed: the median of each measurement per revision, its spread ((max -
min) / median over rounds) and the ratio after / before. A ratio within the
spread is no measurable change.
"""
import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args, cwd=ROOT):
    return subprocess.run(['git', *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def run(command, tree, folder, timeout):
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS='1')
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f'versions: {" ".join(command)} in {tree} failed '
                         f'({done.returncode}):\n{done.stderr[-3000:]}')
    return done.stdout


def bench_round(args, tree, folder):
    out = os.path.join(folder, 'bench.csv')
    run([args.mpiexec, '-n', str(args.ranks), sys.executable, '-m', 'layerasync', 'bench',
         '--model', args.model, '--batch', str(args.batch), '--strategies', args.strategies,
         '--rounds', '1', '--iterations', str(args.iterations), '--csv', out],
        tree, folder, args.timeout)
    with open(out) as f:
        return {f"bench {r['row']}": float(r['ms_per_iter']) for r in csv.DictReader(f)}


def train_round(args, tree, folder):
    metrics = os.path.join(folder, 'train.jsonl')
    if os.path.exists(metrics):
        os.remove(metrics)
    window = max(1, args.train_iterations // 4)
    run([args.mpiexec, '-n', str(args.ranks), sys.executable, '-m', 'layerasync', 'train',
         '--solver', args.model, '--synthetic', '--strategy', args.train_strategy,
         '--set', f'max_iter={args.train_iterations}', '--set', 'test_interval=0',
         '--set', f'display={window}', '--set', 'snapshot=0',
         '--set', f'snapshot_prefix="{folder}/snap"', '--no-progress', '--metrics', metrics],
        tree, folder, args.timeout)
    with open(metrics) as f:
        rates = [r['iters_per_s'] for r in map(json.loads, f) if 'iters_per_s' in r]
    return {f'train {args.train_strategy}': 1e3 / statistics.median(rates[1:] or rates)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--before', required=True, help='revision (commit, tag, branch)')
    p.add_argument('--after', default='HEAD')
    p.add_argument('--model', default='lenet')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--ranks', type=int, default=2)
    p.add_argument('--strategies', default='sync,async-layerwise')
    p.add_argument('--iterations', type=int, default=30, help='bench iterations per row')
    p.add_argument('--train-strategy', default='async-layerwise')
    p.add_argument('--train-iterations', type=int, default=200)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--timeout', type=float, default=900, help='seconds per command')
    args = p.parse_args()
    args.mpiexec = shutil.which('mpiexec', path=os.path.dirname(sys.executable)) or 'mpiexec'
    revisions = {'before': git('rev-parse', '--short', args.before),
                 'after': git('rev-parse', '--short', args.after)}
    scratch = tempfile.mkdtemp(prefix='layerasync-versions-')
    trees = {}
    try:
        for name, rev in revisions.items():
            trees[name] = os.path.join(scratch, name)
            git('worktree', 'add', '--detach', trees[name], rev)
            os.makedirs(os.path.join(scratch, name + '-run'))
        samples = {name: {} for name in revisions}
        for r in range(args.rounds + 1):      # round 0 warms up: Numba caches, page cache
            order = list(revisions) if r % 2 == 0 else list(reversed(revisions))
            for name in order:
                folder = os.path.join(scratch, name + '-run')
                found = {**bench_round(args, trees[name], folder),
                         **train_round(args, trees[name], folder)}
                if r > 0:
                    for key, value in found.items():
                        samples[name].setdefault(key, []).append(value)
            if r > 0:
                print(f'round {r}/{args.rounds} done', file=sys.stderr)
        report(args, revisions, samples)
    finally:
        for tree in trees.values():
            subprocess.run(['git', 'worktree', 'remove', '--force', tree], cwd=ROOT,
                           capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def report(args, revisions, samples):
    print(f"{args.model}, batch {args.batch}, {args.ranks} ranks, {args.rounds} rounds; "
          f"before {revisions['before']}, after {revisions['after']}; ms per iteration")
    print(f"{'':<26} {'before':>9} {'spread':>7} {'after':>9} {'spread':>7} {'after/before':>13}")
    for key in samples['before']:
        if key not in samples['after']:
            continue
        line = [f'{key:<26}']
        medians = {}
        for name in ('before', 'after'):
            values = samples[name][key]
            medians[name] = statistics.median(values)
            line.append(f'{medians[name]:>9.2f} {(max(values) - min(values)) / medians[name]:>7.1%}')
        line.append(f"{medians['after'] / medians['before']:>13.3f}")
        print(' '.join(line))


if __name__ == '__main__':
    main()
