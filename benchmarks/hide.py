"""How much communication is hidden: layerasync's strategies against PyTorch DDP, same link.

    make bench-hide      # = .venv/bin/python benchmarks/hide.py (as root)

On the emulated two-host cluster (``layerasync cluster up``; brought up at
``--bandwidth`` and down again if none is up), one invocation, in alternating
rounds (ours, then DDP's; the next round the other way round):

- ``layerasync bench`` of the net (``--model``, ``--batch`` per rank, without
  the layer types of ``--remove-layers``: the zoo's alexnet-mini without its
  LRN layers by default, since PyTorch's LRN is slow and would flatter us):
  compute only, the allreduce of all gradients alone, and ``--strategies``;
- the same function in PyTorch (our net's layer graph and weights turned into
  a ``torch.nn.Module`` by ``benchmarks/vs_pytorch.py``): compute only, and
  DistributedDataParallel over gloo with each of ``--buckets`` (MB).

Every rank runs one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``)
and both sides run under the same allocator setting. Times are ms per
iteration of the slowest rank, medians over rounds. Printed beside them:
each row against the bound max(compute, comm) of ours, against our ``sync``,
and against DDP's best bucket setting; and the bytes each host sent per
iteration (the link's counters), the check that the traffic crossed the link.
"""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from emulated import bench_on_cluster, cluster_of, run_on_cluster  # noqa: E402


# -- one rank of the DDP side -------------------------------------------------

def ddp_worker(args):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from layerasync.bench import make_solver
    from vs_pytorch import torch_inputs, torch_model, torch_optimizer
    torch.set_num_threads(1)
    rank, size = int(os.environ['PMI_RANK']), int(os.environ['PMI_SIZE'])
    dist.init_process_group('gloo', init_method=f'tcp://{args.master}', rank=rank,
                            world_size=size)
    solver = make_solver(args.model, args.batch, rank, size, prefetch=False,
                         remove=tuple(args.remove_layers.split(',')) if args.remove_layers else ())
    solver.net.forward()                       # fills the data blobs: the inputs of every row
    inputs = torch_inputs(solver.net)
    rows = {'compute': None, **{f'ddp {mb:g} MB': mb for mb in args.buckets}}
    models = {}
    for name, mb in rows.items():
        model = torch_model(solver.net)
        if mb is not None:
            model = DistributedDataParallel(model, bucket_cap_mb=mb)
        models[name] = (model, torch_optimizer(solver, model.module if mb else model))

    def iterations(name, n):
        model, optimizer = models[name]
        for _ in range(n):
            model(inputs).backward()
            optimizer.step()
            optimizer.zero_grad()

    times = {}
    names = list(rows)
    for name in names:                         # warm-up: gloo's connections, allocator
        iterations(name, args.warmup)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            dist.barrier()
            start = time.perf_counter()
            iterations(name, args.iterations)
            seconds = torch.tensor([(time.perf_counter() - start) / args.iterations])
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            times.setdefault(name, []).append(float(seconds))
    if rank == 0:
        with open(args.ddp_worker, 'w') as f:
            json.dump(times, f)
    dist.barrier()
    solver.close()
    # Not destroy_process_group and the interpreter's exit: with gloo, a thread
    # still joinable at exit aborts the process now and then ('terminate called
    # without an active exception'), which failed a whole comparison.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- the orchestration ----------------------------------------------------------

def our_round(args, folder):
    rows, sent = bench_on_cluster(folder, args.model, args.batch, args.strategies,
                                  args.iterations, args.warmup, remove=args.remove_layers,
                                  flags=args.bench_flags)
    rows = {r['row']: float(r['ms_per_iter']) for r in rows}
    # Every row but compute communicates: its warm-up and timed iterations, 2 untimed each.
    iterations = (args.warmup + 2 + args.iterations + 2) * (len(rows) - 1)
    return rows, max(sent) / iterations


def ddp_round(args, folder):
    from layerasync.launch import cluster
    out = os.path.join(folder, 'ddp.json')
    master = f"{cluster.load()['hosts'][0]['address']}:{random.randint(20000, 60000)}"
    program = [sys.executable, os.path.abspath(__file__), '--ddp-worker', out, '--master', master,
               '--model', args.model, '--batch', str(args.batch),
               '--buckets', ','.join(f'{b:g}' for b in args.buckets),
               '--iterations', str(args.iterations), '--warmup', str(args.warmup),
               '--rounds', '1', '--remove-layers', args.remove_layers]
    run_on_cluster(program)
    with open(out) as f:
        return {f'torch {k}': 1e3 * statistics.median(v) for k, v in json.load(f).items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--bandwidth', default='150mbit', help='the link, if none is up')
    p.add_argument('--model', default='alexnet-mini')
    p.add_argument('--remove-layers', default='LRN', help="layer types to remove ('' for none)")
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--strategies', default='sync,layerwise,async-layerwise,delayed:1')
    p.add_argument('--buckets', default='1,25', help='DDP bucket_cap_mb values')
    p.add_argument('--iterations', type=int, default=20,
                   help='timed iterations per row and round (each timing ends with a drain, '
                        'whose cost a short run overstates)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--bench-flags', default='', help='more flags for our bench (e.g. '
                   "'--scheduler priority --in-flight 1')")
    p.add_argument('--json', help='write the medians and every round here')
    p.add_argument('--ddp-worker', help=argparse.SUPPRESS)
    p.add_argument('--master', help=argparse.SUPPRESS)
    args = p.parse_args()
    args.buckets = [float(b) for b in args.buckets.split(',') if b]
    if args.ddp_worker:
        return ddp_worker(args)
    args.bench_flags = args.bench_flags.split()
    with cluster_of(2, args.bandwidth) as state:
        samples, sent = {}, []
        with tempfile.TemporaryDirectory(prefix='layerasync-hide-') as folder:
            for r in range(args.rounds):
                sides = ['ours', 'ddp'] if r % 2 == 0 else ['ddp', 'ours']
                for side in sides:
                    if side == 'ours':
                        rows, per_iteration = our_round(args, folder)
                        sent.append(per_iteration)
                    else:
                        rows = ddp_round(args, folder)
                    for k, v in rows.items():
                        samples.setdefault(k, []).append(v)
                print(f'round {r + 1}/{args.rounds}: ' + ', '.join(
                    f'{k} {v[-1]:.0f}' for k, v in samples.items()), file=sys.stderr)
    report(args, state, samples, sent)


def report(args, state, samples, sent):
    from layerasync.units import format_rate
    med = {k: statistics.median(v) for k, v in samples.items()}
    bound = max(med['compute'], med['comm'])
    ddp = [k for k in med if k.startswith('torch ddp')]
    best = min(ddp, key=med.get) if ddp else None
    print(f"{args.model}{' without ' + args.remove_layers if args.remove_layers else ''}, "
          f"batch {args.batch} per rank, 2 ranks on the emulated "
          f"{format_rate(state['bits_per_second'] / 8)} link; ms per iteration, median of "
          f"{args.rounds} rounds (ours: {' '.join(args.bench_flags) or 'default settings'})")
    print(f"{'row':<24} {'ms':>8} {'spread':>7} {'/bound':>7} {'/sync':>7} {'/best DDP':>9}")
    for k, v in med.items():
        spread = (max(samples[k]) - min(samples[k])) / v
        cells = [f'{v / bound:.3f}' if k not in ('compute', 'comm') else '',
                 f"{v / med['sync']:.3f}" if 'sync' in med and k not in ('compute', 'comm') else '',
                 f'{v / med[best]:.3f}' if best else '']
        print(f'{k:<24} {v:>8.1f} {spread:>7.1%} {cells[0]:>7} {cells[1]:>7} {cells[2]:>9}')
    print(f"bound max(compute, comm) = {bound:.1f} ms; each host sent "
          f"{statistics.median(sent) / 1e6:.2f} MB per communicating iteration of our bench")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'medians': med, 'samples': samples, 'bound': bound}, f, indent=1)


if __name__ == '__main__':
    main()
