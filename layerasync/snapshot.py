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

Files are read with ``allow_pickle=False``; every mismatch with the net is
refused by name and shape.
"""
import os
import tempfile

import numpy as np

__all__ = ['SnapshotError', 'param_blobs', 'per_blob', 'net_weights', 'load_weights',
           'layer_states', 'load_layer_states', 'copy_checked', 'load_npz', 'atomic_savez']


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


def copy_checked(targets, arrays, path, strict=True):
    """Copy ``arrays`` into ``targets`` by key, refusing any name or shape mismatch.

    ``strict``: a key on one side only is refused too. Returns the keys copied.
    """
    problems = []
    for key, target in targets.items():
        if key not in arrays:
            if strict:
                problems.append(f'{key}: missing from the file (net has shape {target.shape})')
        elif arrays[key].shape != target.shape:
            problems.append(f'{key}: file has shape {arrays[key].shape}, net has {target.shape}')
    if strict:
        problems += [f'{key}: in the file, not in the net' for key in arrays if key not in targets]
    if problems:
        raise SnapshotError(f'{path}: parameters do not match this net:\n  ' + '\n  '.join(problems))
    copied = [key for key in targets if key in arrays]
    for key in copied:
        targets[key][...] = arrays[key]
    return copied


def load_weights(net, path, strict=False):
    """Copy weights saved by a snapshot into ``net`` by layer name.

    ``strict`` (resuming) refuses any difference; otherwise (fine-tuning,
    testing) layers absent from the file keep their initial values, but a
    shape mismatch is always refused. Returns the keys copied.
    """
    return copy_checked({k: b.data for k, b in param_blobs(net).items()}, load_npz(path), path,
                        strict)


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


def load_npz(path):
    """Every array of an ``.npz`` file (no pickles), or a SnapshotError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise SnapshotError(f'{path}: no such snapshot file') from None
    except (ValueError, OSError) as e:
        raise SnapshotError(f'{path}: not a readable snapshot ({e})') from None


def atomic_savez(path, arrays):
    """Write to a temporary file in the same folder, then rename: never a torn file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix='.npz')
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
