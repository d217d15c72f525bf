"""How faithful compute replay is: the same bench with real and with replayed compute.

    make bench-replay    # = .venv/bin/python benchmarks/replay_fidelity.py (as root)

On the emulated two-host cluster (``layerasync cluster up``; brought up at
``--bandwidth`` and down again if none is up), one invocation:

1. ``layerasync time --json`` profiles the net in one process, alone on the
   machine (one thread): what a replay on a bigger emulated cluster would use;
2. in alternating rounds (real first, then replayed; the next round the other
   way round), ``layerasync bench`` of every strategy with real compute and
   with ``--compute replay:PROFILE``, same ranks, link and settings.

Printed per row (compute, comm and each strategy; ms per iteration of the
slowest rank, medians over rounds): real, replayed, and replayed / real. The
``compute`` row says what replay leaves out: there both ranks compute at once
on the machine's two cores, sharing caches and memory bandwidth, while the
profile was taken alone.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulated import bench_on_cluster, cluster_of, profile  # noqa: E402


def bench_round(args, folder, replay):
    flags = args.bench_flags + (['--compute', f'replay:{replay}'] if replay else [])
    rows, _ = bench_on_cluster(folder, args.model, args.batch, args.strategies, args.iterations,
                               args.warmup, remove=args.remove_layers, flags=flags)
    return {r['row']: float(r['ms_per_iter']) for r in rows}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--bandwidth', default='150mbit', help='the link, if none is up')
    p.add_argument('--model', default='alexnet-mini')
    p.add_argument('--remove-layers', default='LRN', help="layer types to remove ('' for none)")
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--strategies', default='sync,layerwise,async-layerwise,delayed:1')
    p.add_argument('--iterations', type=int, default=20)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--bench-flags', default='', help='more flags for both benches')
    args = p.parse_args()
    args.bench_flags = args.bench_flags.split()
    from layerasync.units import format_rate
    with cluster_of(2, args.bandwidth) as state:
        real, replayed = {}, {}
        with tempfile.TemporaryDirectory(prefix='layerasync-replay-') as folder:
            path = os.path.join(folder, 'profile.json')
            profile(args.model, args.batch, args.remove_layers, path, iterations=20)
            for r in range(args.rounds):
                for side in (('real', 'replay') if r % 2 == 0 else ('replay', 'real')):
                    rows = bench_round(args, folder, path if side == 'replay' else None)
                    for k, v in rows.items():
                        (replayed if side == 'replay' else real).setdefault(k, []).append(v)
                print(f'round {r + 1}/{args.rounds}: ' + ', '.join(
                    f'{k} {real[k][-1]:.0f}/{replayed[k][-1]:.0f}' for k in real),
                    file=sys.stderr)
    print(f"{args.model}{' without ' + args.remove_layers if args.remove_layers else ''}, batch "
          f"{args.batch} per rank, 2 ranks on the emulated "
          f"{format_rate(state['bits_per_second'] / 8)} link; ms per iteration, median of "
          f'{args.rounds} rounds; real compute and compute replayed from a one-process profile')
    print(f"{'row':<20} {'real':>8} {'spread':>7} {'replayed':>9} {'spread':>7} {'replayed/real':>14}")
    for k in real:
        a, b = statistics.median(real[k]), statistics.median(replayed[k])
        sa = (max(real[k]) - min(real[k])) / a
        sb = (max(replayed[k]) - min(replayed[k])) / b
        print(f'{k:<20} {a:>8.1f} {sa:>7.1%} {b:>9.1f} {sb:>7.1%} {b / a:>14.3f}')


if __name__ == '__main__':
    main()
