"""The ``launch`` and ``cluster`` commands of ``layerasync``.

    layerasync launch [--np N] [--ppn P] [--hostfile F] [--threads T] [--fabric ib|tcp|shm]
                      [--mpi openmpi|mpich|intelmpi] [--dry-run | --sbatch FILE] [--emulated]
                      -- train --solver lenet ...
    layerasync cluster up --hosts N --bandwidth RATE [--latency-free]
    layerasync cluster status [--json]
    layerasync cluster down
"""
import argparse
import json
import os
import sys

from ..units import RATE_SPELLINGS, format_rate
from . import cluster, mpi
from .command import LAUNCHERS, build_command, layerasync_program
from .emulated import emulated_command
from .slurm import batch_script

__all__ = ['add_commands']


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {text!r}')
    return int(text)


def add_commands(subparsers):
    """Add ``launch`` and ``cluster`` to the ``layerasync`` command's subparsers."""
    p = subparsers.add_parser(
        'launch', help='run a layerasync command on many ranks (mpirun, srun, sbatch, emulated)',
        usage='layerasync launch [options] -- COMMAND [ARGS ...]',
        description='Build the mpirun/srun line for this cluster and run it (or print it, or '
                    'write a Slurm batch script). Each rank runs `python -m layerasync COMMAND '
                    'ARGS` with this Python.')
    g = p.add_argument_group('placement')
    g.add_argument('--np', type=_positive, metavar='N', help='ranks in all')
    g.add_argument('--ppn', type=_positive, metavar='P', help='ranks per node')
    g.add_argument('--hostfile', metavar='FILE',
                   help="hosts, as 'host slots=N' (Open MPI) or 'host:N' (MPICH/Intel MPI) lines")
    g.add_argument('--threads', type=_positive, metavar='T',
                   help='cores per rank: sets the thread pools to T and binds each rank to T cores')
    g = p.add_argument_group('MPI')
    g.add_argument('--mpi', choices=mpi.MPIS,
                   help='the MPI library (default: from mpirun --version)')
    g.add_argument('--mpirun', metavar='PATH',
                   help='the mpirun/mpiexec to use (default: next to this Python, else on PATH)')
    g.add_argument('--launcher', choices=LAUNCHERS, default='auto',
                   help='auto: srun inside a Slurm allocation, else mpirun')
    g.add_argument('--fabric', choices=mpi.FABRICS,
                   help='ib (InfiniBand), tcp, or shm (one node), in that MPI\'s own settings')
    g.add_argument('--net-device', metavar='DEV',
                   help='the device the fabric uses: mlx5_0:1 (UCX), eth0 (tcp), ib0 (MPICH verbs)')
    g.add_argument('--export', action='append', default=[], metavar='NAME[=VALUE]',
                   help='pass a variable to every rank (repeatable)')
    g = p.add_argument_group('what to do')
    g.add_argument('--dry-run', action='store_true',
                   help='print the command (or script), run nothing')
    g.add_argument('--sbatch', metavar='FILE', help='write a Slurm batch script to FILE instead')
    g.add_argument('--time', help='with --sbatch: time limit, e.g. 1:00:00')
    g.add_argument('--partition', help='with --sbatch: partition')
    g.add_argument('--account', help='with --sbatch: account')
    g.add_argument('--job-name', default='layerasync', help='with --sbatch: job name')
    g.add_argument('--emulated', action='store_true',
                   help='run on the emulated cluster (`layerasync cluster up`)')
    p.add_argument('program', nargs=argparse.REMAINDER, metavar='-- COMMAND ...',
                   help='the layerasync command every rank runs, e.g. -- train --solver lenet')
    p.set_defaults(run=cmd_launch)

    p = subparsers.add_parser(
        'cluster', help='an emulated cluster on this machine: namespaces joined by shaped links',
        description='N hosts on this machine: one network namespace each, joined by a bridge, '
                    'each host\'s outgoing link shaped to RATE with tc tbf. Needs root.')
    actions = p.add_subparsers(dest='action', required=True)
    a = actions.add_parser('up', help='create N hosts whose links run at RATE (needs root)')
    a.add_argument('--hosts', type=_positive, required=True, metavar='N')
    a.add_argument('--bandwidth', required=True, metavar='RATE',
                   help=f'egress rate of each host: {RATE_SPELLINGS}; 1gbps and 100mbps are '
                        "refused as ambiguous (tc's bps is bytes per second, common usage's "
                        'bits per second)')
    a.add_argument('--latency-free', action='store_true',
                   help='state that links add no propagation delay (only bandwidth is shaped)')
    a.add_argument('--subnet', default=cluster.DEFAULT_SUBNET,
                   help='private IPv4 subnet for the hosts (default %(default)s)')
    a = actions.add_parser('status', help="each host's address and link byte counters")
    a.add_argument('--json', action='store_true', help='print the counters as JSON')
    actions.add_parser('down', help='remove exactly what `cluster up` created')
    p.set_defaults(run=cmd_cluster)


def _program(args):
    words = args.program[1:] if args.program[:1] == ['--'] else args.program
    if not words:
        raise ValueError('nothing to launch: end the options with -- and the layerasync command, '
                         'e.g. layerasync launch --np 4 -- train --solver lenet')
    return layerasync_program(words)


def cmd_launch(args):
    program = _program(args)
    if args.emulated:
        clashes = [flag for flag, given in (
            ('--hostfile', args.hostfile), ('--fabric', args.fabric),
            ('--net-device', args.net_device), ('--sbatch', args.sbatch),
            ('--launcher', args.launcher != 'auto'), ('--mpi', args.mpi not in (None, 'mpich')))
            if given]
        if clashes:
            raise ValueError(f"--emulated sets the hosts, the fabric and the MPI itself; drop "
                             f"{', '.join(clashes)}")
        command, job = emulated_command(program, args.np, args.ppn, args.threads, args.export,
                                        mpiexec=args.mpirun)
    else:
        environ = os.environ
        if args.sbatch:
            # The script runs inside the allocation sbatch makes, not in this one.
            environ = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
            if args.np is None:
                raise ValueError('--sbatch needs --np (and --ppn) to request the resources')
        command, job = build_command(
            program, np=args.np, ppn=args.ppn, hostfile=args.hostfile, mpi=args.mpi,
            mpirun=args.mpirun, fabric=args.fabric, net_device=args.net_device,
            threads=args.threads, export=args.export, environ=environ,
            launcher='srun' if args.sbatch and args.launcher == 'auto' else args.launcher)
    if args.sbatch:
        script = batch_script(command, nodes=job.nodes, ntasks=job.np, ntasks_per_node=job.ppn,
                              cpus_per_task=job.threads, job_name=args.job_name, time=args.time,
                              partition=args.partition, account=args.account)
        if args.dry_run:
            print(script, end='')
            return
        with open(args.sbatch, 'w') as f:
            f.write(script)
        print(f'wrote {args.sbatch}; submit it with: sbatch {args.sbatch}')
        return
    if args.dry_run:
        print(command.display())
        return
    if args.emulated and os.geteuid() != 0:
        raise RuntimeError('ranks on the emulated cluster start with `ip netns exec`, which '
                           'needs root: run this as root, e.g. with sudo')
    print(f'layerasync launch: {command.display()}', file=sys.stderr, flush=True)
    status = command.run()
    if status:
        raise SystemExit(status)


def _warn(text):
    print(f'warning: {text}', file=sys.stderr)


def cmd_cluster(args):
    if args.action == 'up':
        state = cluster.up(args.hosts, args.bandwidth, args.latency_free, args.subnet,
                           warn=_warn)
        print(f"emulated cluster up: {args.hosts} hosts, "
              f"{format_rate(state['bits_per_second'] / 8)} per host "
              f"(tbf burst {state['burst']})")
        for i, m in enumerate(state['hosts']):
            print(f"  host {i}: {m['address']} in namespace {m['netns']}")
        print(f"hostfile: {state['hostfile']}\n"
              f"run on it: layerasync launch --emulated --np {args.hosts} -- train --solver lenet")
        if not args.latency_free:
            print('note: only bandwidth is emulated; links add no propagation delay '
                  '(--latency-free says so and drops this note)')
    elif args.action == 'status':
        state = cluster.load()
        if state is None:
            raise ValueError('no emulated cluster is up (layerasync cluster up --hosts N '
                             '--bandwidth RATE)')
        counters = cluster.link_counters(state)
        print(json.dumps(counters, indent=1) if args.json
              else cluster.format_status(state, counters))
    else:
        removed = cluster.down(warn=_warn)
        print('emulated cluster down; removed:\n  ' + '\n  '.join(removed))
