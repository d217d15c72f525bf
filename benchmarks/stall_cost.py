"""What the stall watchdog costs on the hot path: the allreduce of all gradients
with and without it, interleaved in one run.

    OMP_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python benchmarks/stall_cost.py --model lenet

Per round and mode (alternating which goes first), a fresh ``sync``
communicator reduces the whole gradient ``--iterations`` times after a
warm-up; ms per reduction of the slowest rank. With the watch installed,
every poll of a wait also tests the watch's posted receive (``stall.check``),
as in training. Medians over rounds, every round printed.
"""
import argparse
import statistics


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='lenet')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--iterations', type=int, default=300)
    p.add_argument('--rounds', type=int, default=8)
    args = p.parse_args()
    from mpi4py import MPI

    from layerasync.bench import _time_allreduce, make_solver
    from layerasync.comm import stall
    from layerasync.strategies import get_strategy
    world = MPI.COMM_WORLD
    solver = make_solver(args.model, args.batch, world.rank, world.size)
    watch = stall.StallWatch(world)
    samples = {'with the watch': [], 'without': []}
    for r in range(args.rounds + 1):            # round 0 warms up
        for mode in list(samples) if r % 2 else list(samples)[::-1]:
            if mode == 'without':
                stall.uninstall()
            else:
                stall.install(watch)
            strategy = get_strategy('sync', solver, world)
            strategy.start()
            _time_allreduce(strategy, 20, world.Barrier)    # warm-up
            seconds = world.allreduce(_time_allreduce(strategy, args.iterations, world.Barrier),
                                      op=MPI.MAX)
            strategy.close()
            if r:
                samples[mode].append(1e3 * seconds)
    stall.uninstall()
    watch.close()
    if world.rank == 0:
        print(f'{args.model}: allreduce of all gradients, {world.size} ranks, ms per reduction')
        for mode, values in samples.items():
            print(f'{mode:<15} median {statistics.median(values):.3f}  rounds: '
                  + ' '.join(f'{v:.2f}' for v in values))
        ratio = statistics.median(samples['with the watch']) / statistics.median(samples['without'])
        print(f'with / without: {ratio:.3f}')
    solver.close()


if __name__ == '__main__':
    main()
