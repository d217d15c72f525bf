"""Share a node's cores among the MPI ranks started on it.

Imported by the package before NumPy, because BLAS reads its thread count once,
when it loads. Several ranks on one node that each start a thread per core
oversubscribe the node, and spinning BLAS threads slow everything down (two
ranks of LeNet on 2 cores: 2.5x; docs/cluster.md has the command). When the launcher did
not say how many threads to use, each rank gets its share of the cores.
"""
import os

# Every thread pool a rank may start: OpenMP (and BLAS built on it), OpenBLAS's
# own, MKL's, and Numba's parallel kernels. Unset, each sizes itself to all the
# cores of the node, and ranks-per-node x cores threads fight over the cores.
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS',
                    'NUMBA_NUM_THREADS')
# How launchers tell a rank how many ranks share its node (MPICH/Hydra, Open MPI, Slurm).
# LAYERASYNC_RANKS_PER_MACHINE: set by the emulated cluster, whose hosts share one machine.
LOCAL_SIZE_VARIABLES = ('LAYERASYNC_RANKS_PER_MACHINE', 'MPI_LOCALNRANKS',
                        'OMPI_COMM_WORLD_LOCAL_SIZE', 'SLURM_NTASKS_PER_NODE')


def ranks_on_this_node(environ):
    for name in LOCAL_SIZE_VARIABLES:
        value = environ.get(name, '')
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def usable_cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def threads_per_rank(environ, usable, cores, local=None):
    """The thread count for this rank, or None to leave the defaults alone.
    ``usable``: the cores this process may run on; ``cores``: the node's;
    ``local``: the ranks sharing them (default: as the launcher says)."""
    if any(name in environ for name in THREAD_VARIABLES):
        return None                     # the user or the launcher chose
    local = ranks_on_this_node(environ) if local is None else local
    if local == 1:
        return None
    if usable < cores:
        return usable                   # the launcher bound this rank to its cores
    return max(1, cores // local)


def thread_settings(threads):
    """Environment giving every thread pool of a rank ``threads`` threads."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def blas_threads(environ=os.environ):
    """How many threads BLAS runs with: the first thread variable set, else every core."""
    for name in THREAD_VARIABLES:
        if environ.get(name, '').isdigit():
            return int(environ[name])
    return os.cpu_count() or 1


def share_cores(environ=os.environ):
    threads = threads_per_rank(environ, usable_cores(), os.cpu_count() or 1)
    if threads is not None:
        environ.update(thread_settings(threads))
