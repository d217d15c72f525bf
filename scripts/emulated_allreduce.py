"""Allreduce bandwidth across the emulated cluster, checked against the link counters.

    sudo python -m layerasync cluster up --hosts 2 --bandwidth 1gbit --latency-free
    sudo python scripts/emulated_allreduce.py [--np 2] [--mbytes 25] [--repeat 5]
    sudo python -m layerasync cluster down

Run as above, it starts itself on the emulated cluster (one rank per host by
default) and prints what the ranks measured and how many bytes each host's
link carried meanwhile. Started by an MPI launcher, it is one of those ranks.

Bandwidth is the bus bandwidth of ring allreduce, size x 2(P-1)/P / time: the
bytes each rank sends per second, which with one rank per host is directly
comparable with the line rate.
"""
import argparse
import os
import sys
import time


def measure(mbytes, repeat):
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    buf = np.ones(int(mbytes * 1e6) // 4, np.float32)
    comm.Allreduce(MPI.IN_PLACE, buf)   # warm-up: connections are made lazily
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(repeat):
        comm.Allreduce(MPI.IN_PLACE, buf)
    seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    if comm.rank == 0:
        p = comm.size
        bus = buf.nbytes * 2 * (p - 1) / p * repeat / seconds
        print(f'{p} ranks, allreduce of {buf.nbytes / 1e6:.1f} MB x {repeat}: '
              f'{seconds / repeat * 1e3:.1f} ms each, bus bandwidth {bus / 1e9:.3f} GB/s')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--np', type=int)
    parser.add_argument('--mbytes', type=float, default=25.0)
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args()
    from layerasync.comm import under_mpi_launcher
    if under_mpi_launcher():
        measure(args.mbytes, args.repeat)
        return 0
    from layerasync.launch import cluster
    from layerasync.launch.emulated import emulated_command
    state = cluster.load()
    if state is None:
        sys.exit('no emulated cluster is up: python -m layerasync cluster up --hosts 2 '
                 '--bandwidth 1gbit')
    program = [sys.executable, os.path.abspath(__file__), '--mbytes', str(args.mbytes),
               '--repeat', str(args.repeat)]
    command, _ = emulated_command(program, np=args.np)
    before = cluster.link_counters(state)
    status = command.run()
    after = cluster.link_counters(state)
    for b, a in zip(before, after):
        sent, received = a['tx_bytes'] - b['tx_bytes'], a['rx_bytes'] - b['rx_bytes']
        print(f"{a['netns']} ({a['address']}): sent {sent / 1e6:.1f} MB, received "
              f"{received / 1e6:.1f} MB, shaper drops {a['shaper_drops'] - b['shaper_drops']}")
    return status


if __name__ == '__main__':
    sys.exit(main())
