"""From "N ranks, P per node, T threads each, over fabric F" to the exact
mpirun/srun argument list.

``build_command`` decides where ranks go (``--np``/``--ppn``, a hostfile, or
the Slurm allocation it runs in), which launcher starts them (``srun`` inside
Slurm, else ``mpirun``; ``launcher=`` overrides), which MPI that is (its
``--version`` output, unless ``mpi=`` says), and turns fabric, threads and
exported variables into that MPI's own flags. Everything is an argument list;
nothing is ever given to a shell.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from . import mpi as mpis
from .hostfile import Hostfile, read_hostfile
from .slurm import Allocation

__all__ = ['Command', 'Job', 'build_command', 'layerasync_program', 'parse_exports', 'place']

LAUNCHERS = ('auto', 'mpirun', 'srun')


@dataclass
class Command:
    """A launcher's ``argv``, and ``env``: variables set in the launcher's own
    environment (on top of the caller's) before it starts."""
    argv: list
    env: dict = field(default_factory=dict)

    def display(self):
        """The command as one line a shell would run exactly (shell-quoted)."""
        prefix = ['env'] + [f'{k}={v}' for k, v in self.env.items()] if self.env else []
        return shlex.join(prefix + [str(a) for a in self.argv])

    def run(self):
        """Run it in the foreground; returns its exit status. An interrupt or a
        SIGTERM (a batch system ending the job) is passed on to the launcher,
        which ends its ranks itself (killing it, or leaving it, would orphan
        them), and waited for."""
        process = subprocess.Popen(self.argv, env={**os.environ, **self.env})
        previous = signal.signal(signal.SIGTERM, lambda n, _: process.send_signal(n))
        try:
            return process.wait()
        except KeyboardInterrupt:
            # A second interrupt gives up waiting.
            process.send_signal(signal.SIGINT)
            return process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


@dataclass
class Job:
    """A resolved job: every rank runs ``program``."""
    program: list
    np: int
    ppn: int | None = None          # ranks per node (None: the launcher's default)
    hostfile: Hostfile | None = None  # hosts to name on the command line
    threads: int | None = None      # cores (and threads) per rank
    env: dict = field(default_factory=dict)   # name -> value; None: pass the caller's value
    mca: dict = field(default_factory=dict)   # Open MPI MCA parameters

    @property
    def nodes(self):
        return self.np // self.ppn if self.ppn else None


def layerasync_program(arguments):
    """``python -m layerasync ARGS`` with this interpreter: works on every node
    that sees the same Python, whether or not the console script is on PATH."""
    return [sys.executable, '-m', 'layerasync', *arguments]


def parse_exports(items, environ):
    """``['A=1', 'B']`` -> ``{'A': '1', 'B': None}`` (None: pass the current value on)."""
    out = {}
    for item in items:
        name, sep, value = item.partition('=')
        if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', name):
            raise ValueError(f'--export {item!r}: expected NAME or NAME=VALUE with a variable '
                             'name (letters, digits, _)')
        if not sep and name not in environ:
            raise ValueError(f'--export {name}: {name} is not set here; give {name}=VALUE')
        out[name] = value if sep else None
    return out


def place(np=None, ppn=None, hosts=None, allocation=None, source='the hostfile'):
    """(np, ppn) from what was asked, the hostfile's hosts, and the Slurm allocation.

    Every node runs ``ppn`` ranks, so ``np`` must be a multiple of it and the
    nodes that takes must exist. Without ``np`` the slot counts of the
    hostfile, or the tasks of the allocation, give it. ``source`` names where
    ``hosts`` come from, in messages.
    """
    if hosts is not None:
        count, slots = len(hosts), [h.slots for h in hosts]
    elif allocation is not None:
        count, slots, source = len(allocation.nodes), None, 'the Slurm allocation'
        if np is None and ppn is None and allocation.ntasks:
            np, ppn = allocation.ntasks, allocation.uniform_tasks_per_node()
    else:
        count = slots = source = None
    if np is None and ppn is not None:
        if count is None:
            raise ValueError('--ppn without --np needs hosts to count (--hostfile, or run '
                             'inside a Slurm allocation); or give --np')
        np = ppn * count
    if np is None:
        if not slots or None in slots:
            raise ValueError('how many ranks? give --np (and --ppn), or a hostfile with slot '
                             'counts, or run inside a Slurm allocation with tasks')
        np = sum(slots)
    if ppn is not None:
        if np % ppn:
            raise ValueError(f'--np {np} is not a multiple of --ppn {ppn}: every node runs '
                             f'{ppn} ranks, so give --np as nodes x {ppn}')
        if count is not None and np // ppn > count:
            raise ValueError(f'--np {np} at --ppn {ppn} needs {np // ppn} nodes, but '
                             f'{source} has {count}')
    return np, ppn


def build_command(program, np=None, ppn=None, hostfile=None, mpi=None, mpirun=None,
                  launcher='auto', fabric=None, net_device=None, threads=None, export=(),
                  environ=None):
    """The command that starts ``program`` on every rank; returns (Command, Job).

    ``hostfile``: a path (either dialect); ``mpi``: 'openmpi', 'mpich' or
    'intelmpi' (default: recognised from ``mpirun --version``); ``mpirun``: the
    launcher program (default: next to this Python, else on PATH); ``launcher``:
    'auto' (srun inside a Slurm allocation, else mpirun), 'mpirun' or 'srun';
    ``fabric``: 'ib', 'tcp' or 'shm'; ``net_device``: the NIC/HCA the fabric
    uses; ``threads``: cores and threads per rank; ``export``: 'NAME' or
    'NAME=VALUE' items every rank gets; ``environ``: where Slurm and exported
    values are read (default: os.environ).
    """
    environ = os.environ if environ is None else environ
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher '{launcher}'; known: {', '.join(LAUNCHERS)}")
    if mpi is not None and mpi not in mpis.MPIS:
        raise ValueError(f"unknown MPI '{mpi}'; known: {', '.join(mpis.MPIS)}")
    allocation = Allocation.from_environ(environ)
    hosts = read_hostfile(hostfile) if hostfile else None
    np, ppn = place(np, ppn, hosts.hosts if hosts else None, allocation)
    if threads is None and allocation is not None:
        threads = allocation.cpus_per_task
    if fabric == 'shm' and ((ppn and np > ppn) or (not ppn and hosts and len(hosts.hosts) > 1)):
        raise ValueError('--fabric shm is shared memory within one node, but this job spans '
                         'several nodes; use ib or tcp')
    if launcher == 'auto':
        launcher = 'srun' if allocation is not None else 'mpirun'

    mpirun_path = mpis.find_program(['mpirun', 'mpiexec'], mpirun)
    if mpi is None and (launcher == 'mpirun' or fabric):
        if mpirun_path is None:
            raise ValueError('no mpirun found next to this Python or on PATH: load your MPI '
                             '(module load ...), give --mpirun PATH, or --mpi '
                             f"{'|'.join(mpis.MPIS)}")
        mpi = mpis.mpi_of(mpirun_path)
    job = Job(program, np, ppn, hosts, threads)
    if fabric:
        job.mca, job.env = mpis.fabric_settings(mpi, fabric, net_device)
    elif net_device:
        raise ValueError('--net-device needs --fabric (the device belongs to a fabric)')
    if threads:
        job.env.update(mpis.thread_settings(threads))
    job.env.update(parse_exports(export, environ))

    if launcher == 'srun':
        srun = mpis.find_program(['srun'])
        if srun is None:
            raise ValueError('srun not found on PATH (is this a Slurm cluster?); '
                             'use --launcher mpirun')
        argv, env = mpis.srun_argv(srun, job)
    elif mpirun_path is None:
        raise ValueError('no mpirun found next to this Python or on PATH: load your MPI, or '
                         'give --mpirun PATH')
    elif mpi == 'openmpi':
        argv, env = mpis.openmpi_argv(mpirun_path, job)
    else:
        argv, env = mpis.hydra_argv(mpirun_path, job, intel=mpi == 'intelmpi')
    return Command(argv, env), job
