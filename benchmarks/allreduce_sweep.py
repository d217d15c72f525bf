"""Allreduce time against message size: the measurement the simulator's network
model is fitted to (``layerasync sim --network sweep.json``).

    OMP_NUM_THREADS=1 mpiexec -n 2 python benchmarks/allreduce_sweep.py --json sweep.json

For each size (float32 arrays, 4 KB to 64 MB by default, in steps of 4x) every
rank times ``repeats`` in-place reductions of the same buffer, both blocking
(``Allreduce``) and non-blocking (``Iallreduce`` + ``Wait``, the call the
communicator makes). A barrier precedes each timed batch, the slowest rank's
time is the batch's time (an allreduce is done when it is done everywhere),
and the fastest of ``batches`` batches is kept, as OSU's benchmarks do for
noise on shared machines; the median is stored too. Rank 0 writes JSON:
``{"ranks", "mpi", "sizes" (bytes), "allreduce_s", "iallreduce_s",
"allreduce_median_s", "iallreduce_median_s"}`` (seconds per reduction).

``--hooks MODEL`` (a zoo name or a net file) also measures what the
simulator calls the hook overhead: the compute thread's own time inside the
strategy hooks that post and progress communication. It trains
``--hook-iterations`` iterations of MODEL as ``layerasync bench`` does
(``bench.make_solver``: synthetic data, the prototxt's batch; ``Solver.step``)
with the ``layerwise`` strategy, the default communicator settings and the
strategy's progress hook set inside long layers, as the trainer sets it. After
a warm-up it times every ``before_forward`` / ``after_backward`` call and
every progress call inside a layer, and stores their total time per layer
hook call as ``hook_overhead_s``, which ``layerasync sim --network`` then uses:

    OMP_NUM_THREADS=1 mpiexec -n 2 python benchmarks/allreduce_sweep.py --json sweep.json \
        --hooks lenet
"""
import argparse
import json
import platform
import time

import numpy as np
from mpi4py import MPI


def time_reduction(comm, buf, repeats, blocking):
    """Seconds per reduction, the slowest rank's, for one batch of ``repeats``."""
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        if blocking:
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:
            comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM).Wait()
    elapsed = (time.perf_counter() - start) / repeats
    return comm.allreduce(elapsed, op=MPI.MAX)


def sweep(comm, sizes, batches, budget):
    """Per size: (best, median) seconds for blocking and non-blocking reductions.

    ``budget``: seconds of timed work aimed at per size and kind, which sets
    the repeats per batch (at least 1), so small sizes get many repeats.
    """
    result = {'sizes': [], 'allreduce_s': [], 'iallreduce_s': [],
              'allreduce_median_s': [], 'iallreduce_median_s': []}
    for nbytes in sizes:
        buf = np.ones(nbytes // 4, np.float32)
        # One untimed reduction sets up the buffers and connections; it also
        # tells how many repeats fit in the budget (the same on every rank).
        first = time_reduction(comm, buf, 1, True)
        repeats = max(1, int(budget / batches / max(first, 1e-6)))
        result['sizes'].append(nbytes)
        for blocking, key in ((True, 'allreduce'), (False, 'iallreduce')):
            times = [time_reduction(comm, buf, repeats, blocking) for _ in range(batches)]
            result[f'{key}_s'].append(min(times))
            result[f'{key}_median_s'].append(float(np.median(times)))
    return result


class TimedHooks:
    """A strategy's hooks for ``Solver.step``, adding up the time spent in them:
    ``before_forward`` / ``after_backward`` (counted in ``calls``) and the
    progress hook that long layers call (``progress``, for ``Net.set_progress``)."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.inner = strategy.progress_hook()
        self.progress = self._time_progress if self.inner is not None else None
        self.reset()

    def reset(self):
        self.seconds, self.calls = 0.0, 0

    def before_forward(self, i):
        self._time(self.strategy.before_forward, i)

    def after_backward(self, i):
        self._time(self.strategy.after_backward, i)

    def end_forward(self):
        self.strategy.end_forward()

    def _time(self, hook, i):
        start = time.perf_counter()
        hook(i)
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def _time_progress(self):
        start = time.perf_counter()
        self.inner()
        self.seconds += time.perf_counter() - start


def hook_overhead(comm, model, iterations, warmup=20):
    """Seconds in the strategy's hooks per layer hook call (layerwise), the slowest
    rank's, over ``iterations`` iterations of ``model`` after ``warmup``."""
    from layerasync.bench import make_solver
    from layerasync.strategies import get_strategy
    solver = make_solver(model, None, comm.Get_rank(), comm.Get_size())
    strategy = get_strategy('layerwise', solver, comm)
    try:
        strategy.start()
        hooks = TimedHooks(strategy)
        solver.net.set_progress(hooks.progress)
        solver.step(warmup, strategy, hooks)
        strategy.finish()
        hooks.reset()
        solver.step(iterations, strategy, hooks)
        strategy.finish()
    finally:
        solver.net.set_progress(None)
        solver.close()
    strategy.close()
    return comm.allreduce(hooks.seconds / hooks.calls, op=MPI.MAX)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--json', required=True, metavar='FILE', help='where rank 0 writes the sweep')
    p.add_argument('--min-bytes', type=int, default=4 << 10)
    p.add_argument('--max-bytes', type=int, default=64 << 20)
    p.add_argument('--factor', type=int, default=4, help='size step between measurements')
    p.add_argument('--batches', type=int, default=7, help='timed batches per size (best is kept)')
    p.add_argument('--budget', type=float, default=1.0,
                   help='seconds of timing per size and kind (sets the repeats per batch)')
    p.add_argument('--hooks', metavar='MODEL',
                   help='also measure the per-hook overhead training MODEL (a zoo name or net '
                        'file) with layerwise')
    p.add_argument('--hook-iterations', type=int, default=200)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    sizes = []
    n = args.min_bytes
    while n <= args.max_bytes:
        sizes.append(n)
        n *= args.factor
    result = sweep(comm, sizes, args.batches, args.budget)
    if args.hooks:
        result['hook_overhead_s'] = hook_overhead(comm, args.hooks, args.hook_iterations)
        result['hook_model'] = args.hooks
    if comm.Get_rank() == 0:
        result = {'ranks': comm.Get_size(), 'mpi': MPI.Get_library_version().splitlines()[0],
                  'host_cpus': platform.processor() or platform.machine(), **result}
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
        for nbytes, blocking, nonblocking in zip(result['sizes'], result['allreduce_s'],
                                                 result['iallreduce_s']):
            print(f'{nbytes:>10} B  Allreduce {1e6 * blocking:10.1f} us  '
                  f'Iallreduce+Wait {1e6 * nonblocking:10.1f} us')
        if args.hooks:
            print(f"hook overhead ({args.hooks}, layerwise): "
                  f"{1e6 * result['hook_overhead_s']:.1f} us per layer hook")
        print(f'sweep written to {args.json}')


if __name__ == '__main__':
    main()
