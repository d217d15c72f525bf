"""Memory: what a run will hold, reserved before it is allocated.

A ``Budget`` is the memory a run may use and what its parts have reserved so
far. Each part reserves *before* it allocates, so that a net too large for
the machine is refused with a message instead of being killed halfway:

- ``Layer.make_param`` reserves each parameter blob ``param_sets`` times: its
  values and gradient (the arenas), and, for the train net of a solver, the
  solver's histories (2 + ``Solver.history_count``);
- the Data layer reserves its batches (tops, prefetch buffers) and the data
  set it will read into memory;
- after each layer's setup the Net adds what the layer really holds beside
  those (``hold``): its new top blobs' data and diffs, and its workspaces
  (the NumPy arrays it keeps as attributes);
- a strategy reserves the gradient sets it keeps beside the net's own
  (``delayed:K`` holds K more) through the solver's ``memory``.

A reservation that takes the total past the limit raises ``MemoryLimitError``
naming who asked and for what, the total, the limit and the largest
reservations. A run whose layers would allocate hundreds of gigabytes then
fails before the first of them is touched.

The limit, in this order: ``$LAYERASYNC_MEMORY_LIMIT`` (bytes, or with a K,
M, G or T suffix, powers of 1024); else ``MemAvailable`` of /proc/meminfo,
shared equally by the MPI ranks this launcher started on the machine
(``MPI_LOCALNRANKS``, MPICH's; ``OMPI_COMM_WORLD_LOCAL_SIZE``, Open MPI's);
else (no /proc/meminfo) no limit.
"""
import os
import re
import weakref

import numpy as np

__all__ = ['Budget', 'MemoryLimitError', 'available', 'held_by', 'parse_size', 'format_bytes', 'LIMIT_VARIABLE']

LIMIT_VARIABLE = 'LAYERASYNC_MEMORY_LIMIT'
_LOCAL_RANKS = ('MPI_LOCALNRANKS', 'OMPI_COMM_WORLD_LOCAL_SIZE')
_SUFFIXES = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


class MemoryLimitError(ValueError):
    """A run that would need more memory than it may use; the message says who and how much."""


def parse_size(text):
    """Bytes from ``'1048576'``, ``'512M'``, ``'8G'`` or ``'1.5T'`` (suffixes: powers of 1024,
    an optional trailing B or iB); ValueError if it is not a positive size."""
    m = re.fullmatch(r'\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*', text, re.IGNORECASE)
    size = int(float(m.group(1)) * _SUFFIXES[m.group(2).upper()]) if m else 0
    if size <= 0:
        raise ValueError(f'{text!r} is not a size: write bytes, or a number with a K, M, G or T '
                         'suffix (powers of 1024), e.g. 512M or 8G')
    return size


def format_bytes(n):
    for unit, size in (('TiB', 1 << 40), ('GiB', 1 << 30), ('MiB', 1 << 20), ('KiB', 1 << 10)):
        if n >= size:
            return f'{n / size:.1f} {unit}'
    return f'{n} bytes'


def available():
    """``(bytes, where that figure comes from)`` for this process; ``(None, ...)``: unknown."""
    text = os.environ.get(LIMIT_VARIABLE)
    if text is not None:
        try:
            return parse_size(text), f'{LIMIT_VARIABLE}={text}'
        except ValueError as e:
            raise MemoryLimitError(f'{LIMIT_VARIABLE}: {e}') from None
    try:
        with open('/proc/meminfo') as f:
            meminfo = f.read()
    except OSError:
        return None, 'no /proc/meminfo'
    m = re.search(r'^MemAvailable:\s+(\d+) kB', meminfo, re.MULTILINE)
    if m is None:
        return None, 'no MemAvailable in /proc/meminfo'
    total = int(m.group(1)) << 10
    ranks = next((int(os.environ[v]) for v in _LOCAL_RANKS if os.environ.get(v, '').isdigit()), 1)
    if ranks > 1:
        return total // ranks, (f'MemAvailable in /proc/meminfo, {format_bytes(total)}, shared by '
                                f'{ranks} ranks on this machine')
    return total, 'MemAvailable in /proc/meminfo'


def held_by(owner, blobs=()):
    """The arrays ``owner`` holds as attributes (alone or in lists and tuples:
    a layer's workspaces, a source's images), and ``blobs``' data and diffs."""
    arrays = [a for blob in blobs for a in (blob.data, blob.diff)]
    for value in vars(owner).values():
        arrays += [a for a in (value if isinstance(value, (list, tuple)) else [value])
                   if isinstance(a, np.ndarray)]
    return arrays


def _root(array):
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class Budget:
    """The memory a run may use (``limit`` bytes, ``source`` saying why; default:
    ``available()``) and its reservations so far, by owner (``"layer 'fc6'
    (InnerProduct)"``, ``'strategy delayed:3'``, ...).

    ``param_sets``: how many arrays of its size each parameter blob costs
    (2: values and gradients; a solver's train net adds its histories).
    """

    def __init__(self, limit=None, param_sets=2, source='the limit given'):
        if limit is None:
            limit, source = available()
        self.limit, self.source = limit, source
        self.param_sets = param_sets
        self.reserved = {}                       # owner -> bytes
        self._seen = weakref.WeakValueDictionary()   # id -> array already counted

    @property
    def total(self):
        return sum(self.reserved.values())

    def reserve(self, owner, what, nbytes, where=None):
        """Add ``nbytes`` to ``owner``'s reservation, for ``what``; refused
        (``MemoryLimitError``, prefixed by ``where``) past the limit."""
        owner_bytes = self.reserved.get(owner, 0) + int(nbytes)
        total = self.total - self.reserved.get(owner, 0) + owner_bytes
        if self.limit is not None and total > self.limit:
            largest = sorted({**self.reserved, owner: owner_bytes}.items(), key=lambda kv: -kv[1])
            listing = ', '.join(f'{name} {format_bytes(n)}' for name, n in largest[:3])
            prefix = f'{where}: ' if where else ''
            raise MemoryLimitError(
                f'{prefix}{owner}: {what}, {format_bytes(nbytes)}, would bring the run to '
                f'{format_bytes(total)}, more than the {format_bytes(self.limit)} it may use '
                f'({self.source}); largest: {listing}. Set {LIMIT_VARIABLE} (e.g. 64G) to allow more')
        self.reserved[owner] = owner_bytes

    def hold(self, owner, arrays, where=None):
        """``owner`` holds ``arrays`` now: add the bytes of those not counted
        yet (arrays sharing memory count once, for the first owner)."""
        held = 0
        for a in arrays:
            root = _root(a)
            if id(root) not in self._seen:
                self._seen[id(root)] = root
                held += root.nbytes
        if held:
            self.reserve(owner, 'its blobs and workspaces', held, where)

    def describe(self):
        """The reservations, largest first, as one line."""
        largest = sorted(self.reserved.items(), key=lambda kv: -kv[1])
        return ', '.join(f'{name} {format_bytes(n)}' for name, n in largest) or 'nothing reserved'
