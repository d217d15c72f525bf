"""Ranks on the emulated cluster (``cluster.py``), with MPICH's Hydra.

``mpiexec`` runs in host 0's namespace and starts the other hosts' proxies
through ``-launcher ssh -launcher-exec WRAPPER``: the script ``cluster up``
wrote, which calls ``netns_exec`` (``ip netns exec`` instead of ssh).
"""
import os
import shutil

from .._threads import threads_per_rank, usable_cores
from . import mpi as mpis
from .cluster import load
from .command import Command, Job, parse_exports, place
from .hostfile import Host, Hostfile

__all__ = ['EMULATION_ENV', 'emulated_command']

# Without these, MPICH finds that all "hosts" are one machine and silently uses
# shared memory; with them every rank talks TCP over its eth0 (libfabric tcp).
EMULATION_ENV = {'MPIR_CVAR_CH4_NETMOD': 'ofi', 'FI_PROVIDER': 'tcp',
                 'MPIR_CVAR_CH4_SHM_ENABLE': '0', 'MPIR_CVAR_NOLOCAL': '1'}


def emulated_command(program, np=None, ppn=None, threads=None, export=(), state_file=None,
                     mpiexec=None, environ=None):
    """The command that runs ``program`` on ``np`` ranks across the emulated hosts
    (default: one per host); returns (Command, Job).

    Ranks are not bound to cores: each host's Hydra proxy would bind its ranks
    counting from core 0, so ranks on different emulated hosts would share
    cores. ``threads`` sets the thread pools' sizes only; without it (and
    without thread variables in the environment) every rank gets its share of
    the machine's cores, which all the emulated hosts share.
    """
    environ = os.environ if environ is None else environ
    state = load(state_file)
    if state is None:
        raise ValueError('no emulated cluster is up: run `layerasync cluster up --hosts N '
                         '--bandwidth RATE` first')
    hosts = [Host(m['address']) for m in state['hosts']]
    if np is not None and ppn is None:
        if np % len(hosts) and np > len(hosts):
            raise ValueError(f'--np {np} does not spread evenly over the {len(hosts)} emulated '
                             f'hosts: give a multiple of {len(hosts)}, or --ppn')
        ppn = -(-np // len(hosts))
    np, ppn = place(np, ppn or 1, hosts, source='the emulated cluster')
    path = mpis.find_program(['mpiexec', 'mpirun'], mpiexec)
    if path is None or mpis.mpi_of(path) != 'mpich':
        raise ValueError('the emulated cluster needs MPICH (its Hydra mpiexec takes '
                         f"-launcher-exec); found {path or 'no mpiexec'}: install the mpich "
                         'package into this Python, or give --mpirun PATH to an MPICH mpiexec')
    env = dict(EMULATION_ENV, LAYERASYNC_RANKS_PER_MACHINE=str(np))
    if not threads:   # the emulated hosts share one machine's cores
        threads = threads_per_rank(environ, usable_cores(), os.cpu_count() or 1, local=np)
    if threads:
        env.update(mpis.thread_settings(threads))
    env.update(parse_exports(export, environ))
    # threads=None: no -bind-to (see above); the thread variables are in env.
    job = Job(program, np, ppn, Hostfile(state['hostfile'], hosts, 'bare'), None, env)
    first = state['hosts'][0]
    options = ['-launcher', 'ssh', '-launcher-exec', state['wrapper'],
               '-localhost', first['address']]
    argv, _ = mpis.hydra_argv(path, job, options=options)
    ip = shutil.which('ip') or 'ip'
    # mpiexec runs in host 0's namespace: the proxies it starts on the other hosts
    # must reach it at an address they can route to (-localhost).
    return Command([ip, 'netns', 'exec', first['netns'], *argv]), job
