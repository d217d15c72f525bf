"""Framework overhead: what the net's dispatch and the strategy hooks cost.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py --model lenet --batch 64

One process, interleaved rounds, medians of ms per iteration for:

- ``raw``: every layer's forward and backward called directly, then the update
  (the work itself, no framework around it);
- ``net``: ``Solver.step`` alone (the net's dispatch loop, then the update);
- ``hooked``: ``Solver.step`` under async-layerwise's hooks on a one-rank MPI
  communicator: every progress call, post, wait and deferred update that a
  distributed run makes, with no network behind them.

Overhead = (hooked - raw) / hooked.
"""
import argparse
import statistics
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='lenet')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--iterations', type=int, default=10)
    p.add_argument('--rounds', type=int, default=7)
    args = p.parse_args()
    from mpi4py import MPI

    from layerasync.bench import make_solver
    from layerasync.strategies import get_strategy
    solver = make_solver(args.model, args.batch, 0, 1)
    net = solver.net
    strategy = get_strategy('async-layerwise', solver, MPI.COMM_SELF)
    strategy.start()
    net.set_progress(strategy.progress_hook())

    def raw():
        for i, layer in enumerate(net.layers):
            layer.forward(net.bottom_vecs[i], net.top_vecs[i])
        for i in reversed(range(len(net.layers))):
            if net.layer_need_backward[i]:
                net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                       net.bottom_vecs[i])
        solver.update()

    runs = {'raw': raw, 'net': lambda: solver.step(1), 'hooked': lambda: solver.step(1, strategy)}
    for f in runs.values():
        f()
        f()
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, f in runs.items():
            start = time.perf_counter()
            for _ in range(args.iterations):
                f()
            times[name].append((time.perf_counter() - start) / args.iterations * 1e3)
    strategy.finish()
    net.set_progress(None)
    strategy.close()
    solver.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(', '.join(f'{k} {v:.2f} ms (range {min(times[k]):.2f}-{max(times[k]):.2f})'
                    for k, v in med.items()))
    print(f"framework overhead: {100 * (med['hooked'] - med['raw']) / med['hooked']:.1f}% "
          f'of the iteration ({args.model}, batch {args.batch})')


if __name__ == '__main__':
    main()
