"""What differs between MPI libraries: how to recognise them, how each selects
a fabric, binds a rank to cores and passes environment variables on.

Open MPI's ``mpirun`` (with UCX), MPICH's and Intel MPI's Hydra ``mpiexec``
and Slurm's ``srun`` each get their own argument-list builder below; the
settings they share (thread variables, fabric variables) are plain dicts.
"""
import os
import shutil
import subprocess
import sys

from .._threads import THREAD_VARIABLES, thread_settings

__all__ = ['MPIS', 'FABRICS', 'THREAD_VARIABLES', 'detect_mpi', 'find_program', 'mpi_of',
           'fabric_settings', 'thread_settings', 'openmpi_argv', 'hydra_argv', 'srun_argv']

MPIS = ('openmpi', 'mpich', 'intelmpi')
FABRICS = ('ib', 'tcp', 'shm')


# (mpi, fabric) -> (Open MPI MCA parameters, environment, variable naming the device)
_FABRICS = {
    ('openmpi', 'ib'): ({'pml': 'ucx'}, {'UCX_TLS': 'rc,sm,self'}, 'UCX_NET_DEVICES'),
    ('openmpi', 'tcp'): ({'pml': 'ucx'}, {'UCX_TLS': 'tcp,sm,self'}, 'UCX_NET_DEVICES'),
    ('openmpi', 'shm'): ({'pml': 'ucx'}, {'UCX_TLS': 'sm,self'}, None),
    ('mpich', 'ib'): ({}, {'MPIR_CVAR_CH4_NETMOD': 'ofi', 'FI_PROVIDER': 'verbs'},
                      'FI_VERBS_IFACE'),
    ('mpich', 'tcp'): ({}, {'MPIR_CVAR_CH4_NETMOD': 'ofi', 'FI_PROVIDER': 'tcp'}, 'FI_TCP_IFACE'),
    ('mpich', 'shm'): ({}, {'MPIR_CVAR_CH4_NETMOD': 'ofi', 'FI_PROVIDER': 'shm'}, None),
    # Intel MPI's mlx provider is its InfiniBand path (built on UCX, hence UCX_NET_DEVICES).
    ('intelmpi', 'ib'): ({}, {'I_MPI_FABRICS': 'shm:ofi', 'I_MPI_OFI_PROVIDER': 'mlx'},
                         'UCX_NET_DEVICES'),
    ('intelmpi', 'tcp'): ({}, {'I_MPI_FABRICS': 'shm:ofi', 'I_MPI_OFI_PROVIDER': 'tcp'},
                          'FI_TCP_IFACE'),
    ('intelmpi', 'shm'): ({}, {'I_MPI_FABRICS': 'shm'}, None),
}


def detect_mpi(version_text, program='mpirun'):
    """Which MPI printed ``version_text`` (the output of ``mpirun --version``)."""
    # Intel MPI's launcher is a Hydra descendant: test for it before MPICH's.
    if 'Intel(R) MPI Library' in version_text:
        return 'intelmpi'
    if 'Open MPI' in version_text or 'OpenRTE' in version_text:
        return 'openmpi'
    if 'HYDRA build details' in version_text or 'MPICH' in version_text:
        return 'mpich'   # MPICH and its derivatives (MVAPICH, ...), all Hydra
    first = version_text.strip().splitlines()[0] if version_text.strip() else '(no output)'
    raise ValueError(f"cannot tell which MPI '{program} --version' belongs to (it says: "
                     f"{first!r}); give --mpi {'|'.join(MPIS)}")


def find_program(names, explicit=None):
    """The launcher to run: ``explicit``, else the first of ``names`` next to
    this Python (a virtualenv's own MPI), else on PATH; None if there is none."""
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise ValueError(f'{explicit}: no such executable')
        return path
    here = os.path.dirname(sys.executable)
    for name in names:
        candidate = os.path.join(here, name)
        if os.access(candidate, os.X_OK):
            return candidate
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def mpi_of(mpirun):
    """Run ``mpirun --version`` and recognise the MPI."""
    try:
        out = subprocess.run([mpirun, '--version'], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ValueError(f"could not run '{mpirun} --version' to recognise the MPI ({e}); "
                         f"give --mpi {'|'.join(MPIS)}") from None
    return detect_mpi(out.stdout + out.stderr, mpirun)


def fabric_settings(mpi, fabric, net_device=None):
    """(MCA parameters, environment) that make ``mpi`` use ``fabric``."""
    if mpi not in MPIS:
        raise ValueError(f"unknown MPI '{mpi}'; known: {', '.join(MPIS)}")
    if fabric not in FABRICS:
        raise ValueError(f"unknown fabric '{fabric}'; known: {', '.join(FABRICS)}")
    mca, env, device_variable = _FABRICS[mpi, fabric]
    env = dict(env)
    if net_device:
        if device_variable is None:
            raise ValueError(f'--net-device {net_device}: fabric {fabric} uses no network device')
        env[device_variable] = net_device
    return dict(mca), env


# -- argument lists ---------------------------------------------------------------
# Each takes the launcher path and a resolved ``Job`` (see ``command.py``) and
# returns (argv, environment for the launcher itself).

def openmpi_argv(mpirun, job):
    argv = [mpirun, '-n', str(job.np)]
    argv += _host_arguments(job, 'openmpi', '--hostfile', '--host')
    if job.ppn and job.threads:
        argv += ['--map-by', f'ppr:{job.ppn}:node:PE={job.threads}', '--bind-to', 'core']
    elif job.ppn:
        argv += ['--map-by', f'ppr:{job.ppn}:node']
    elif job.threads:
        argv += ['--map-by', f'slot:PE={job.threads}', '--bind-to', 'core']
    for name, value in job.mca.items():
        argv += ['--mca', name, value]
    for name, value in job.env.items():
        # -x NAME passes mpirun's own value on; -x NAME=VALUE sets it.
        argv += ['-x', name if value is None else f'{name}={value}']
    return argv + job.program, {}


def hydra_argv(mpiexec, job, intel=False, options=()):
    """MPICH's (or, ``intel``, Intel MPI's) Hydra; ``options``: more global options."""
    argv = [mpiexec, *options, '-n', str(job.np)]
    argv += _host_arguments(job, 'hydra', '-f', '-hosts')
    if job.ppn:
        argv += ['-ppn', str(job.ppn)]
    env = dict(job.env)
    if job.threads and intel:
        # Intel MPI binds through its own variables: one domain of `threads` cores per rank.
        env.update(I_MPI_PIN_CELL='core', I_MPI_PIN_DOMAIN=f'{job.threads}:compact')
    elif job.threads:
        argv += ['-bind-to', f'core:{job.threads}']
    names = [name for name, value in env.items() if value is None]
    if names:
        argv += ['-genvlist', ','.join(names)]
    for name, value in env.items():
        if value is not None:
            argv += ['-genv', name, value]
    return argv + job.program, {}


def srun_argv(srun, job):
    argv = [srun, f'--ntasks={job.np}']
    if job.ppn:
        argv += [f'--nodes={job.nodes}', f'--ntasks-per-node={job.ppn}']
    if job.hostfile is not None:
        argv += [f'--nodelist={",".join(h.name for h in job.hostfile.hosts)}']
    if job.threads:
        argv += [f'--cpus-per-task={job.threads}', '--cpu-bind=cores']
    env = {f'OMPI_MCA_{name}': value for name, value in job.mca.items()}
    env.update(job.env)
    if env:
        # srun splits --export at commas, so values (UCX_TLS=rc,sm,self) travel in
        # srun's own environment; --export names what must reach the tasks.
        argv += [f'--export=ALL,{",".join(env)}']
    return argv + job.program, {name: value for name, value in env.items() if value is not None}


def _host_arguments(job, dialect, file_option, list_option):
    if job.hostfile is None:
        return []
    if job.hostfile.readable_by(dialect):
        return [file_option, job.hostfile.path]
    # The file is in the other MPI's dialect: name the hosts inline instead
    # (a host without a count has one slot there, hence --ppn as the count).
    slots = [job.ppn or h.slots for h in job.hostfile.hosts]
    names = [h.name if n is None else f'{h.name}:{n}' for h, n in zip(job.hostfile.hosts, slots)]
    return [list_option, ','.join(names)]
