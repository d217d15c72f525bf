"""Gradient communication over MPI.

``Communicator`` (``comm.mpi``) reduces *buckets* — contiguous slices of a
gradient buffer — with non-blocking, in-place allreduce; see ``buckets`` for
how slices are fused and cut and ``scheduler`` for the order of posts.

The contract, which strategies rely on:

- ``post(bucket)``: the bucket's gradient is complete; reduce it (its next
  generation). Collective: every rank posts the same buckets in the same order.
- ``progress()``: advance in-flight work; call it often (between layers).
- ``wait(bucket)`` / ``wait_any(buckets)`` / ``wait_all()``: block until
  reduced here. After ``wait`` the slice holds the *sum* over ranks.
- ``control`` (``comm.control.Control``: ``bcast``, ``allreduce_mean``,
  ``barrier``, ``check_same``, ...): blocking collectives on a communicator of
  their own; call them only after ``wait_all()``.
- ``settings``: the settings in force (after any fallback), for the start-up
  agreement check.

mpi4py is imported only inside this package (tests/test_no_mpi.py checks it):
one process without MPI trains.
"""
import os

__all__ = ['init_mpi', 'under_mpi_launcher', 'DEFAULTS', 'CODECS', 'parse_codec', 'choose_priority', 'PRIORITY_ABOVE',
           'in_flight_for', 'IN_FLIGHT', 'SCHEDULERS', 'scheduler_name']

# Chosen by measurement (docs/results.md, "Choosing the communicator's
# defaults" and "Hiding communication as long as computation"): lenet, resnet20
# and alexnet-mini on 2 ranks, shared memory and emulated 1 Gbit/s and 150
# Mbit/s links. Fusing layers below 64 kB saves per-message latency; 1 MB
# chunks keep several in flight without splitting work too finely; a progress
# thread (ours or MPICH's) competes for cores that compute needs. The
# scheduler follows the link ('auto', see ``choose_priority``): the negotiated
# priority order costs rounds, which pay only where the gradients take long on
# the wire. In flight (None: ``in_flight_for``): under fifo the count only
# delays posts; under priority whatever is posted cannot be overtaken, so
# fewer chunks in flight let the first layers' gradients through sooner.
DEFAULTS = dict(fusion_bytes=65536, chunk_bytes=1 << 20, max_in_flight=None, priority='auto',
                progress='poll', spin=None, max_sleep=1e-3,   # spin None: backoff.default_spin()
                compress=None)   # or a CODECS spec: the gradients on the wire (comm.compress)

# 'auto' picks the priority scheduler when the allreduce of all gradients is
# estimated to take at least this long (seconds). Measured (2 ranks): at 400 ms
# (alexnet-mini, 150 Mbit/s) priority took async-layerwise from 1.20-1.25x to
# 1.01-1.07x the bound; at 60 ms (alexnet-mini, 1 Gbit/s) neither won; at 15 ms
# (lenet, 1 Gbit/s) and at 1-4 ms (shared memory) the rounds cost 1-8%.
PRIORITY_ABOVE = 0.1


def choose_priority(priority, wire_seconds):
    """The scheduler in force: ``priority`` itself if it is True or False; for
    'auto', whether the gradients' estimated allreduce time ``wire_seconds``
    reaches ``PRIORITY_ABOVE``."""
    if priority == 'auto':
        return bool(wire_seconds >= PRIORITY_ABOVE)
    if isinstance(priority, bool):
        return priority
    raise ValueError(f"priority must be True, False or 'auto', not {priority!r}")


# --compress (``comm.compress``): how each is written.
CODECS = ('fp16', 'bf16', 'topk:RATIO', 'powersgd:RANK')


def parse_codec(spec):
    """``'bf16'`` -> ('bf16', None), ``'topk:0.01'`` -> ('topk', 0.01),
    ``'powersgd:4'`` -> ('powersgd', 4); ValueError naming what is wrong. (Here,
    not in ``comm.compress``: parsing needs no MPI.)"""
    name, _, argument = (spec or '').partition(':')
    if name in ('fp16', 'bf16') and not argument:
        return name, None
    if name == 'powersgd':
        if not argument.isdigit() or int(argument) < 1:
            raise ValueError(f"compression '{spec}': powersgd:RANK needs a rank >= 1, the "
                             'width of the factors (e.g. powersgd:4)')
        return name, int(argument)
    if name == 'topk':
        try:
            ratio = float(argument)
        except ValueError:
            ratio = None
        if ratio is None or not 0 < ratio <= 1:
            raise ValueError(f"compression '{spec}': topk:RATIO needs 0 < RATIO <= 1, the share "
                             'of each chunk sent (e.g. topk:0.01)')
        return name, ratio
    raise ValueError(f"unknown compression '{spec}'; known: {', '.join(CODECS)}")


# The --scheduler names and the ``priority`` values they stand for.
SCHEDULERS = {'auto': 'auto', 'fifo': False, 'priority': True}


def scheduler_name(priority):
    """The --scheduler name of a ``priority`` value (True, False or 'auto')."""
    return {value: name for name, value in SCHEDULERS.items()}[priority]


# In flight by scheduler, when not given. 150 Mbit/s, alexnet-mini, priority:
# async-layerwise 1.08x the bound with 4 (425-440 ms), 1.03-1.05x with 2
# (410-413 ms); 1 (one round per post) was slower than either (453-473 ms).
IN_FLIGHT = {False: 4, True: 2}


def in_flight_for(max_in_flight, priority):
    """The in-flight limit in force: ``max_in_flight``, or for None the
    default of the scheduler in force (``priority``, a bool)."""
    return IN_FLIGHT[priority] if max_in_flight is None else max_in_flight


# Set by the process managers of MPICH/Hydra, Open MPI, Intel MPI and Slurm.
_LAUNCHER_VARIABLES = ('PMI_SIZE', 'PMI_RANK', 'OMPI_COMM_WORLD_SIZE', 'PMIX_RANK',
                       'MPI_LOCALNRANKS', 'HYDI_CONTROL_FD')


def under_mpi_launcher():
    """Was this process started by mpirun/mpiexec/srun (with more than one rank)?"""
    for var in ('PMI_SIZE', 'OMPI_COMM_WORLD_SIZE'):
        if os.environ.get(var, '').isdigit():
            return int(os.environ[var]) > 1
    return any(v in os.environ for v in _LAUNCHER_VARIABLES[2:])


def init_mpi(progress='poll'):
    """Start MPI (asking for MPI_THREAD_MULTIPLE) and return ``COMM_WORLD``.

    ``progress='mpi'`` asks MPICH for its asynchronous progress thread, which
    only takes effect if set before MPI starts — hence here.
    """
    if progress == 'mpi':
        os.environ.setdefault('MPIR_CVAR_ASYNC_PROGRESS', '1')
    import mpi4py
    mpi4py.rc.thread_level = 'multiple'
    from mpi4py import MPI
    return MPI.COMM_WORLD
