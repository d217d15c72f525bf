"""Weights and solver-state files: what a snapshot holds, and how it is read back.

A snapshot is two ``.npz`` files written atomically (a temporary file in the
same folder, then a rename: never a torn file under the final name):

- ``<prefix>_iter_<N>.weights.npz``: every parameter blob, keyed ``layer/k``;
- ``<prefix>_iter_<N>.solverstate.npz``: the iteration, the solver type, the
  weights file's name, the history arenas per blob (``history<h>/layer/k``),
  every layer's ``state_dict()`` (data positions, pass counters: ``data/...``;
  test nets under ``test<k>/``), and the strategy's in-flight arrays
  (``extra/...``). No random-generator state is needed: the only draws after
  construction (dropout masks, crops) are pure functions of the seed and the
  sample's stream position.

Every file is read through ``load_npz`` and classified by ``inspect`` (a
weights file or a solver state); anything else is a ``SnapshotError`` that
names the file and says what it is: missing, a folder, empty, not a zip
archive, truncated or corrupt, holding pickled objects (refused: files are
read with ``allow_pickle=False``), the other kind of snapshot file (with what
to pass instead), or lacking a key. Every mismatch with the net is refused by
name and shape.

A writer killed mid-write leaves its temporary file behind; the next
``atomic_savez`` in that folder removes it (``remove_stale_temporaries``).
After a divergence, ``last_good`` picks the snapshot to resume from.
"""
import os
import re
import socket
import tempfile
import time
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

__all__ = ['SnapshotError', 'WEIGHTS', 'SOLVERSTATE', 'WeightsCopy', 'param_blobs', 'per_blob',
           'net_weights', 'load_weights', 'layer_states', 'load_layer_states', 'copy_checked',
           'load_npz', 'inspect', 'read', 'read_solverstate', 'atomic_savez',
           'remove_stale_temporaries', 'STALE_AFTER', 'is_good', 'last_good']

WEIGHTS, SOLVERSTATE = 'weights', 'solverstate'
# What makes a file a solver state: its fields, and the dtype kinds each may have.
_STATE_FIELDS = {'iter': 'iu', 'type': 'U', 'weights': 'U'}
_BLOB_KEY = re.compile(r'(?P<layer>.+)/(?P<k>\d+)')
_TEMPORARY = re.compile(r'\.tmp-(?:(?P<host>.+)-(?P<pid>\d+)-)?[^-]*\.npz')
STALE_AFTER = 3600.0   # seconds after which any temporary file is a leftover


class SnapshotError(ValueError):
    """A weights or solver-state file that cannot be used as given."""


def param_blobs(net):
    """``layer/k`` -> parameter Blob, in net order (the keys of every file)."""
    return {f'{name}/{k}': blob for name, blobs in net.params.items() for k, blob in enumerate(blobs)}


def net_weights(net):
    return {key: blob.data for key, blob in param_blobs(net).items()}


def per_blob(slots, arena_array):
    """Views of an arena-shaped array (a solver history), keyed like the weights.

    ``slots`` is the solver's parameter plan (``Solver.slots``).
    """
    return {s.key: arena_array[s.view].reshape(s.shape) for s in slots}


def copy_checked(targets, arrays, path):
    """Copy ``arrays`` into ``targets`` by key, refusing any difference of
    names or shapes (every problem listed at once). Returns the keys copied."""
    problems = [f'{key}: missing from the file (net has shape {target.shape})'
                if key not in arrays else
                f'{key}: file has shape {arrays[key].shape}, net has {target.shape}'
                for key, target in targets.items()
                if key not in arrays or arrays[key].shape != target.shape]
    problems += [f'{key}: in the file, not in the net' for key in arrays if key not in targets]
    if problems:
        raise SnapshotError(f'{path}: parameters do not match this net:\n  ' + '\n  '.join(problems))
    for key, target in targets.items():
        target[...] = arrays[key]
    return list(targets)


class WeightsCopy(NamedTuple):
    """What ``load_weights`` copied: ``blobs`` of ``layers``; the net's layers
    ``missing`` from the file (they keep their fill); the file's layers
    ``unused`` by the net. ``str()`` is the line to log."""
    blobs: int
    layers: list
    missing: list
    unused: list

    def __str__(self):
        parts = [f'copied {self.blobs} blob{"s" * (self.blobs != 1)} of {len(self.layers)} '
                 f'layer{"s" * (len(self.layers) != 1)}: {_names(self.layers)}']
        if self.missing:
            parts.append(f'not in the file: {_names(self.missing)}')
        if self.unused:
            parts.append(f'in the file but not in the net: {_names(self.unused)}')
        return '; '.join(parts)


def load_weights(net, path, strict=False):
    """Copy a weights file into ``net`` by layer name, as Caffe's ``CopyTrainedLayersFrom``.

    A layer in both must have the same blobs with the same shapes (refused
    otherwise: rename the layer to learn it from scratch). ``strict``
    (resuming) refuses any other difference too; otherwise (fine-tuning,
    testing) the net's layers absent from the file keep their fill and the
    file's layers absent from the net are ignored, but a file that shares no
    layer with the net is refused. Returns a ``WeightsCopy``.
    """
    arrays = read(path, WEIGHTS)
    targets = {key: blob.data for key, blob in param_blobs(net).items()}
    in_net, in_file = _layers(targets), _layers(arrays)
    shared = [name for name in in_net if name in in_file]
    if not strict:
        if not shared:
            raise SnapshotError(f'{path}: no layer of this weights file is in the net, so nothing '
                                f'would be copied (the file has {_names(in_file)}; the net has '
                                f'{_names(in_net)}): layers are matched by name')
        targets = {k: v for k, v in targets.items() if _layer(k) in in_file}
        arrays = {k: v for k, v in arrays.items() if _layer(k) in in_net}
    copy_checked(targets, arrays, path)
    return WeightsCopy(len(targets), shared, [n for n in in_net if n not in in_file],
                       [n for n in in_file if n not in in_net])


def layer_states(net, prefix):
    """Every layer's ``state_dict()`` (data position, pass counters)."""
    state = {}
    for layer in net.layers:
        if hasattr(layer, 'state_dict'):
            for key, value in layer.state_dict().items():
                state[f'{prefix}data/{layer.name}/{key}'] = np.asarray(value)
    return state


def load_layer_states(net, prefix, state):
    for layer in net.layers:
        if hasattr(layer, 'load_state_dict'):
            data = f'{prefix}data/{layer.name}/'
            layer.load_state_dict({k[len(data):]: v for k, v in state.items() if k.startswith(data)})


# -- reading and classifying files ----------------------------------------------
def load_npz(path):
    """Every array of an ``.npz`` file, or a SnapshotError naming the file and what it is."""
    try:
        with open(path, 'rb') as f:
            head = f.read(6)
    except FileNotFoundError:
        raise SnapshotError(f'{path}: no such snapshot file') from None
    except IsADirectoryError:
        raise SnapshotError(f'{path}: a folder, not a snapshot file') from None
    except OSError as e:
        raise SnapshotError(f'{path}: cannot be read ({e.strerror})') from None
    if not head:
        raise SnapshotError(f'{path}: an empty file (0 bytes), not a snapshot')
    if head.startswith(b'\x93NUMPY'):
        raise SnapshotError(f'{path}: a single .npy array, not a snapshot (.npz)')
    if not head.startswith((b'PK\x03\x04', b'PK\x05\x06')):   # a zip's first entry, or an empty zip
        raise SnapshotError(f'{path}: not a .npz file (it does not begin as a zip archive does)')
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: _array(npz, key, path) for key in npz.files}
    except SnapshotError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as e:
        raise SnapshotError(f'{path}: truncated or corrupt ({type(e).__name__}: {e}); '
                            'use another snapshot') from None


def _array(npz, key, path):
    try:
        value = npz[key]
    except ValueError:
        if _holds_objects(npz, key):
            raise SnapshotError(f"{path}: array '{key}' holds pickled Python objects; snapshots are "
                                'plain arrays, read with allow_pickle=False, so it is refused') from None
        raise
    if not isinstance(value, np.ndarray):   # a zip member that is no .npy file
        raise SnapshotError(f"{path}: member '{key}' of the archive is not an array: not a snapshot")
    return value


def _holds_objects(npz, key):
    """Whether the ``.npy`` header of ``key`` declares an object dtype (read without unpickling)."""
    with npz.zip.open(f'{key}.npy') as member:
        version = np.lib.format.read_magic(member)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        return header(member)[2].hasobject


def inspect(path):
    """``WEIGHTS`` or ``SOLVERSTATE``: what the file at ``path`` is, or a SnapshotError."""
    return _classify(path, load_npz(path))


def read(path, kind):
    """The arrays of a file that must be of ``kind``; the other kind is refused
    with what to pass instead."""
    arrays = load_npz(path)
    found = _classify(path, arrays)
    if found == kind:
        return arrays
    if kind == SOLVERSTATE:
        state = path[:-len('.weights.npz')] + '.solverstate.npz' if path.endswith('.weights.npz') else None
        beside = (f'resume from {state}, the solver state written with it' if state and
                  os.path.exists(state) else 'resume from the .solverstate.npz written with it')
        raise SnapshotError(f'{path}: a weights file, not a solver state: {beside} (train '
                            '--snapshot), or start a fresh solver from these weights (train --weights)')
    weights = os.path.join(os.path.dirname(path), str(arrays['weights']))
    raise SnapshotError(f'{path}: a solver state, not a weights file: its weights are {weights} '
                        '(train --weights, test --weights), or resume from it (train --snapshot)')


def _classify(path, arrays):
    if not arrays:
        raise SnapshotError(f'{path}: holds no arrays, not a snapshot')
    if any(field in arrays for field in _STATE_FIELDS):
        for field, kinds in _STATE_FIELDS.items():
            if field not in arrays:
                raise SnapshotError(f"{path}: a solver state without '{field}': incomplete or not "
                                    'written by layerasync')
            value = arrays[field]
            if value.shape != () or value.dtype.kind not in kinds:
                raise SnapshotError(f"{path}: the solver state's '{field}' must be a single "
                                    f"{'integer' if 'i' in kinds else 'string'}, not {value!r}")
        return SOLVERSTATE
    odd = [key for key in arrays if not _BLOB_KEY.fullmatch(key)]
    if odd:
        raise SnapshotError(f'{path}: neither a weights file (keys layer/k) nor a solver state '
                            f"(keys iter, type, weights); it holds {_names(odd)}")
    odd = [key for key, value in arrays.items() if value.dtype.kind not in 'biuf']
    if odd:
        raise SnapshotError(f'{path}: weights that are not numbers: ' + ', '.join(
            f'{key} ({arrays[key].dtype})' for key in odd))
    return WEIGHTS


def read_solverstate(path, solver_type):
    """A solver state written by a ``solver_type`` solver, and the path of its weights file."""
    state = read(path, SOLVERSTATE)
    if str(state['type']) != solver_type:
        raise SnapshotError(f'{path}: snapshot of a {state["type"]} solver, this is {solver_type}')
    weights = os.path.join(os.path.dirname(path), str(state['weights']))
    if not os.path.exists(weights):
        raise SnapshotError(f'{path}: its weights file {weights} does not exist (a snapshot is '
                            'both files, kept in one folder)')
    return state, weights


# -- writing ----------------------------------------------------------------------
def atomic_savez(path, arrays):
    """Write to a temporary file in the same folder, then rename: never a torn
    file under ``path``. Leftovers of killed writers in the folder are removed
    first (``remove_stale_temporaries``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.tmp-{socket.gethostname()}-{os.getpid()}-',
                               suffix='.npz')
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_stale_temporaries(folder, now=None):
    """Remove the temporary files of writers that can no longer finish; their names.

    A temporary is named ``.tmp-<host>-<pid>-<random>.npz``. It is stale when
    its writer is a dead process of this host, or when it is older than
    ``STALE_AFTER`` seconds: the pid of another host (a shared folder) cannot
    be checked from here, and a pid may have been reused; no snapshot takes
    an hour to write.
    """
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    for name in os.listdir(folder):
        match = _TEMPORARY.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            old = now - os.stat(path).st_mtime > STALE_AFTER
            if old or (match['host'] == host and not _alive(int(match['pid']))):
                os.unlink(path)
                removed.append(name)
        except FileNotFoundError:   # its writer renamed it, or another cleaner was first
            pass
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


# -- the snapshot to go back to -------------------------------------------------
def is_good(path):
    """Whether the solver state at ``path`` and its weights file are readable
    and every floating-point array of both (weights, history, a strategy's
    in-flight gradients) is finite."""
    try:
        state = read(path, SOLVERSTATE)
        weights = read(os.path.join(os.path.dirname(path), str(state['weights'])), WEIGHTS)
    except SnapshotError:
        return False
    return all(np.isfinite(a).all() for a in (*state.values(), *weights.values()) if a.dtype.kind == 'f')


def last_good(snapshots, diverged_at):
    """The newest of ``snapshots`` (``(iteration, solver-state path)`` pairs,
    oldest first) worth resuming from after the loss of iteration
    ``diverged_at`` was not finite; None if there is none.

    The snapshot of iteration N holds the weights after N updates, and
    iteration N's loss is computed from exactly those weights. The trainer
    checks every iteration's loss before its update, so the loss from the
    weights of every N < ``diverged_at`` was finite, while the snapshot of
    ``diverged_at`` itself holds the weights the loss overflowed from: the
    update that exploded happened before it was written, so its weights may
    be finite (1e28) and still diverge again on resume. The rule is therefore:
    the newest snapshot taken before ``diverged_at`` that ``is_good`` (it may
    be truncated, or hold non-finite history or in-flight gradients).
    """
    for iteration, path in reversed(snapshots):
        if iteration < diverged_at and is_good(path):
            return path
    return None


def _layer(key):
    return _BLOB_KEY.fullmatch(key)['layer']


def _layers(arrays):
    """The layer names of ``layer/k`` keys, in order, once each."""
    return list(dict.fromkeys(_layer(key) for key in arrays))


def _names(names, shown=8):
    names = list(names)
    more = f', ... ({len(names) - shown} more)' if len(names) > shown else ''
    return ', '.join(names[:shown]) + more if names else 'none'
