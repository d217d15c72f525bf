"""Which communicator settings to use by default: measured, not assumed.

    .venv/bin/python experiments/comm_settings.py --model lenet --out out/settings

For every combination of progress engine, chunk size, scheduler and
in-flight limit given, it runs ``mpiexec -n RANKS layerasync bench`` (every
row interleaved in rounds) and collects, per setting, ms/iteration of
``sync``, ``layerwise`` and ``async-layerwise`` with the compute-only and
allreduce-alone times of the same run. Writes ``<out>/<model>.csv`` and
prints a Markdown table sorted by async-layerwise's time.
"""
import argparse
import csv
import itertools
import os
import subprocess
import sys
import tempfile

from layerasync.bench import write_csv
from layerasync.launch.mpi import find_program


def bench(args, progress, chunk, scheduler, in_flight):
    mpiexec = find_program(['mpiexec']) or 'mpiexec'
    with tempfile.NamedTemporaryFile(suffix='.csv') as out:
        command = [mpiexec, '-n', str(args.ranks), sys.executable, '-m', 'layerasync', 'bench',
                   '--model', args.model, '--batch', str(args.batch),
                   '--strategies', 'sync,layerwise,async-layerwise',
                   '--iterations', str(args.iterations), '--rounds', str(args.rounds),
                   '--progress', progress, '--chunk-bytes', str(chunk), '--scheduler', scheduler,
                   '--in-flight', str(in_flight), '--csv', out.name]
        env = dict(os.environ, OMP_NUM_THREADS='1')
        if progress == 'mpi':
            env['MPIR_CVAR_ASYNC_PROGRESS'] = '1'
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        return {row['row']: row for row in csv.DictReader(open(out.name))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='lenet')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--ranks', type=int, default=2)
    p.add_argument('--iterations', type=int, default=20)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--progress', default='poll,thread,mpi')
    p.add_argument('--chunk-bytes', default='0,262144,1048576')
    p.add_argument('--scheduler', default='priority,fifo')
    p.add_argument('--in-flight', default='4')
    p.add_argument('--out', default='out/settings')
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = []
    grid = itertools.product(args.progress.split(','), map(int, args.chunk_bytes.split(',')),
                             args.scheduler.split(','), map(int, args.in_flight.split(',')))
    for progress, chunk, scheduler, in_flight in grid:
        rows = bench(args, progress, chunk, scheduler, in_flight)
        ms = {k: float(rows[k]['ms_per_iter']) for k in ('compute', 'comm', 'sync', 'layerwise',
                                                          'async-layerwise')}
        result = dict(progress=progress, chunk_bytes=chunk, scheduler=scheduler,
                      in_flight=in_flight, **ms,
                      async_vs_bound=float(rows['async-layerwise']['vs_bound']),
                      async_vs_sync=float(rows['async-layerwise']['vs_sync']),
                      layerwise_vs_sync=float(rows['layerwise']['vs_sync']),
                      spread=max(float(r['spread']) for r in rows.values()))
        results.append(result)
        print(', '.join(f'{k}={v:.3f}' if isinstance(v, float) else f'{k}={v}'
                        for k, v in result.items()), flush=True)
    path = os.path.join(args.out, f'{args.model}.csv')
    write_csv(results, path)
    print(f'\n`{" ".join([".venv/bin/python", "experiments/comm_settings.py"] + sys.argv[1:])}`\n')
    print('| progress | chunk | scheduler | in flight | compute ms | comm ms | sync | layerwise '
          '| async-layerwise | async / bound | async / sync | max spread |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in sorted(results, key=lambda r: r['async-layerwise']):
        print(f"| {r['progress']} | {r['chunk_bytes']} | {r['scheduler']} | {r['in_flight']} | "
              f"{r['compute']:.1f} | {r['comm']:.1f} | {r['sync']:.1f} | {r['layerwise']:.1f} | "
              f"{r['async-layerwise']:.1f} | {r['async_vs_bound']:.3f} | {r['async_vs_sync']:.3f} "
              f"| {r['spread']:.0%} |")


if __name__ == '__main__':
    main()
