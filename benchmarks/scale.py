"""Every strategy and the parameter servers at 2 to 16 ranks: the emulated cluster, compute replayed.

    make bench-scale     # = .venv/bin/python benchmarks/scale.py (as root; hours: see below)

Two cores cannot compute for 16 ranks, but they carry 16 ranks' real MPI
traffic when the computation is replayed (``--compute replay``, see
docs/cluster.md, section 6). For each net of the matrix (``NETS``) the script
profiles the net once, in one process alone (``layerasync time --json``; a
profile kept from an earlier run is reused, so that every row of a net
replays the same one), and then for each P of ``--ranks`` brings up an emulated cluster of P hosts
(P + S for S servers) whose links run at the net's bandwidth and runs:

- ``layerasync bench`` of the allreduce strategies on P ranks;
- for each S of ``--servers``, ``ps-sync`` and ``ps-async`` with S servers
  training the same P workers (P + S ranks).

Scaling. Each rank replays one core's profile divided by the net's speed-up
X, on a link of B per host. The comm / compute ratio is then that of a
cluster whose nodes compute X times faster than one core of this machine
and whose links are B × (X_real / X) for a node X_real times faster: with
X = 1 and B = 150 Mbit/s, a 32-core node on 4.8 Gbit/s, or a 20-core node on
3 Gbit/s (compute scaled linearly with cores; memory-bound layers scale
worse, so the real ratio is somewhat lower). The emulated links are the
bottleneck only while their sum fits what the machine's TCP stack moves on
two cores: ``host_mb_sent`` (the busiest host's bytes, from the link
counters) and the ``comm`` row at each P show whether it did.

On each cluster of P hosts (no servers) it also times allreduces of 4 KB to
4 MB (``benchmarks/allreduce_sweep.py``, the chunks' sizes) into
``sweep-LINK-P.json`` beside the profiles: the link that
``benchmarks/validate_sim.py`` fits the simulator to, at each P, before it
predicts the rows.

Rows are appended to ``--csv`` as ``layerasync bench`` writes them, with the
net, the link, the speed-up and the straggler factor added, and printed as they come. Cost: a
bench at P ranks starts P Python processes on two cores (about 3 s of CPU
each) and times ``--iterations`` iterations per row and round; the
seconds each bench took are printed.
"""
import argparse
import csv
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from emulated import bench_on_cluster, cluster_of, profile, run_on_cluster  # noqa: E402

# net: (batch per rank, layer types removed, compute speed-up, link per host)
NETS = {
    'alexnet-mini': (64, 'LRN', 1.0, '150mbit'),
    'resnet20': (64, '', 1.0, '50mbit'),
    'gpt-mini': (32, '', 1.0, '100mbit'),
}
ALLREDUCE = 'sync,layerwise,async-layerwise,delayed:1'
SWEEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'allreduce_sweep.py')


def sweep(path):
    """Allreduce times of 4 KB .. 4 MB on the cluster that is up, into ``path``."""
    run_on_cluster([sys.executable, SWEEP, '--json', path, '--max-bytes', str(4 << 20),
                    '--batches', '3', '--budget', '0.5'])


def append_rows(path, new):
    """Add the rows ``new`` to the CSV at ``path``, its header the union of every
    row's fields (rows of an older run may lack a newer field: it reads empty)."""
    rows = []
    if os.path.exists(path):
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    rows += new
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path + '.new', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval='')
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + '.new', path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--nets', default=','.join(NETS), help=f"of: {', '.join(NETS)}")
    p.add_argument('--ranks', default='2,4,8,16', help='worker counts P')
    p.add_argument('--servers', default='1,2,4', help="server counts S for the ps rows ('' none)")
    p.add_argument('--runs', default='allreduce,ps',
                   help="which runs: 'allreduce' (the strategies on P ranks), 'ps' (P "
                        "workers and S servers), or both (default %(default)s)")
    p.add_argument('--straggler', type=float, default=1.0, metavar='F',
                   help='the last worker replays F times slower (--straggler P-1:F); '
                        'the rows say F (default %(default)s: none)')
    p.add_argument('--iterations', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--csv', default='scale.csv', help='rows are appended here')
    p.add_argument('--profiles', default=None,
                   help='keep the profiles here, as NET.json (default: beside --csv), for '
                        '`layerasync sim` and benchmarks/validate_sim.py')
    args = p.parse_args()
    from layerasync.launch import cluster
    if cluster.load() is not None:
        raise SystemExit('scale: an emulated cluster is up; this script brings up its own '
                         '(layerasync cluster down first)')
    nets = [n for n in args.nets.split(',') if n]
    ranks = [int(r) for r in args.ranks.split(',') if r]
    servers = [int(s) for s in args.servers.split(',') if s]
    kinds = set(args.runs.split(','))
    if not kinds <= {'allreduce', 'ps'}:
        raise SystemExit(f"scale: --runs {args.runs}: give allreduce, ps or allreduce,ps")
    profiles = args.profiles or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(profiles, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='layerasync-scale-') as folder:
        for model in nets:
            batch, remove, speedup, bandwidth = NETS[model]
            path = os.path.join(profiles, f'{model}.json')
            if not os.path.exists(path):   # the rows already measured used this one
                profile(model, batch, remove, path)
            runs = (([(P, 0) for P in ranks] if 'allreduce' in kinds else [])
                    + ([(P, s) for P in ranks for s in servers] if 'ps' in kinds else []))
            for P, s in runs:
                flags = ['--compute', f'replay:{path}', '--compute-speedup', f'{speedup:g}']
                if args.straggler != 1:
                    flags += ['--straggler', f'{P - 1}:{args.straggler:g}']
                if s:
                    flags += ['--servers', str(s)]
                start = time.perf_counter()
                with cluster_of(P + s, bandwidth, reuse=False):
                    rows, sent = bench_on_cluster(
                        folder, model, batch, ALLREDUCE if not s else 'ps-sync,ps-async',
                        args.iterations, args.warmup, args.rounds, remove, flags)
                    calibration = os.path.join(profiles, f'sweep-{bandwidth}-{P}.json')
                    if not s and args.straggler == 1 and not os.path.exists(calibration):
                        sweep(calibration)
                sent = max(sent)
                # The allreduce rows of a PS bench run on P workers alone: not kept.
                rows = [row for row in rows if not s or row['row'] in ('ps-sync', 'ps-async')]
                for row in rows:
                    row.update(net=model, link=bandwidth, speedup=speedup,
                               straggler=args.straggler, host_mb_sent=f'{sent / 1e6:.1f}')
                append_rows(args.csv, rows)
                for row in rows:
                    print(f"{model:<13} P={P:<2} S={s} {row['row']:<16} "
                          f"{float(row['ms_per_iter']):8.1f} ms  spread "
                          f"{float(row['spread']):.1%}", flush=True)
                print(f'  ({time.perf_counter() - start:.0f} s)', file=sys.stderr, flush=True)


if __name__ == '__main__':
    main()
