"""Snapshot files: every bad file refused by name and kind, weights copied by
layer name as Caffe does, leftovers of killed writers removed, and the
snapshot named after a divergence really resumable."""
import math
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import layerasync
from layerasync import proto, schema
from layerasync.snapshot import (SOLVERSTATE, STALE_AFTER, WEIGHTS, SnapshotError, atomic_savez,
                                 inspect, is_good, last_good, load_weights, read_solverstate)
from layerasync.solver import get_solver
from test_solver import make, solver_text


def other(*replacements):
    """The tiny net's solver with each ``(old, new)`` replaced in its text."""
    text = solver_text()
    for old, new in replacements:
        text = text.replace(old, new)
    return get_solver(proto.parse(text, schema.SolverParameter))


@pytest.fixture
def snap(tmp_path):
    """A real snapshot after two iterations: (solver-state path, weights path)."""
    s = make('momentum: 0.9')
    s.step(2)
    state = s.snapshot(str(tmp_path / 'run'))
    return state, state.replace('.solverstate.npz', '.weights.npz')


def cut_in_half(path):
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])


def bad_file(kind, folder, snap):
    """Write a bad file of ``kind`` in ``folder``; its path and the message expected."""
    path = str(folder / f'{kind}.npz')
    if kind == 'missing':
        return path, 'no such snapshot file'
    if kind == 'folder':
        os.mkdir(path)
        return path, 'a folder, not a snapshot file'
    if kind == 'empty':
        open(path, 'wb').close()
        return path, r'an empty file \(0 bytes\)'
    if kind == 'random':
        open(path, 'wb').write(np.random.default_rng(0).bytes(4096))
        return path, 'not a .npz file'
    if kind == 'npy':
        np.save(open(path, 'wb'), np.zeros(3))
        return path, 'a single .npy array, not a snapshot'
    if kind in ('truncated weights', 'truncated state'):
        original = open(snap[kind == 'truncated weights'], 'rb').read()
        open(path, 'wb').write(original)
        cut_in_half(path)
        return path, r'truncated or corrupt \(BadZipFile'
    if kind == 'corrupt':
        data = bytearray(open(snap[1], 'rb').read())
        data[200] ^= 0xff   # inside the first array's bytes
        open(path, 'wb').write(data)
        return path, r"truncated or corrupt \(BadZipFile: Bad CRC-32 for file 'fc1/0.npy'\)"
    if kind == 'pickled':
        np.savez(path, **{'fc1/0': np.array([{'a': 1}], dtype=object)})
        return path, "array 'fc1/0' holds pickled Python objects"
    if kind == 'no arrays':
        np.savez(path)
        return path, 'holds no arrays'
    if kind == 'zip of text':
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('notes.txt', 'hello')
        return path, "member 'notes.txt' of the archive is not an array"
    if kind == 'other arrays':
        np.savez(path, x=np.zeros(2), y=np.ones(2))
        return path, r'neither a weights file \(keys layer/k\) nor a solver state.*it holds x, y'
    if kind == 'text weights':
        np.savez(path, **{'fc1/0': np.array(['a', 'b'])})
        return path, r'weights that are not numbers: fc1/0 \(<U1\)'
    raise AssertionError(kind)


KINDS = ['missing', 'folder', 'empty', 'random', 'npy', 'truncated weights', 'truncated state',
         'corrupt', 'pickled', 'no arrays', 'zip of text', 'other arrays', 'text weights']


@pytest.mark.parametrize('kind', KINDS)
def test_every_bad_file_is_refused_by_both_loaders_naming_file_and_kind(tmp_path, snap, kind):
    path, message = bad_file(kind, tmp_path, snap)
    for load in (inspect, lambda p: read_solverstate(p, 'SGD'), lambda p: load_weights(make().net, p)):
        with pytest.raises(SnapshotError, match=message) as error:
            load(path)
        assert str(error.value).startswith(f'{path}: ')


def test_a_real_snapshot_is_classified_and_restored(snap):
    state, weights = snap
    assert inspect(state) == SOLVERSTATE and inspect(weights) == WEIGHTS
    arrays, named = read_solverstate(state, 'SGD')
    assert named == weights and int(arrays['iter']) == 2


def test_a_weights_file_as_solver_state_and_the_reverse_say_what_to_pass(snap):
    state, weights = snap
    with pytest.raises(SnapshotError, match=f'{weights}: a weights file, not a solver state: '
                                            f'resume from {state}, the solver state written with it'):
        read_solverstate(weights, 'SGD')
    with pytest.raises(SnapshotError, match=f'{state}: a solver state, not a weights file: its '
                                            f'weights are {weights}'):
        load_weights(make().net, state)


def test_solver_state_of_another_solver_without_its_weights_or_a_field(tmp_path, snap):
    state, weights = snap
    with pytest.raises(SnapshotError, match='snapshot of a SGD solver, this is Adam'):
        read_solverstate(state, 'Adam')
    arrays = dict(np.load(state))
    del arrays['iter']
    np.savez(tmp_path / 'no_iter.npz', **arrays)
    with pytest.raises(SnapshotError, match="a solver state without 'iter'"):
        read_solverstate(str(tmp_path / 'no_iter.npz'), 'SGD')
    arrays['iter'] = np.array(2.5)
    np.savez(tmp_path / 'float_iter.npz', **arrays)
    with pytest.raises(SnapshotError, match="the solver state's 'iter' must be a single integer"):
        read_solverstate(str(tmp_path / 'float_iter.npz'), 'SGD')
    os.unlink(weights)
    with pytest.raises(SnapshotError, match=f'its weights file {weights} does not exist'):
        read_solverstate(state, 'SGD')


# -- weights by layer name ---------------------------------------------------------
def test_weights_are_copied_by_layer_name_and_the_rest_keeps_its_fill(snap):
    _, weights = snap
    saved = dict(np.load(weights))
    net = make().net
    assert str(load_weights(net, weights)) == 'copied 4 blobs of 2 layers: fc1, fc2'
    renamed, fresh = other(('"fc2"', '"fc9"')), other(('"fc2"', '"fc9"'))
    copied = load_weights(renamed.net, weights)
    assert (copied.blobs, copied.layers, copied.missing, copied.unused) == (2, ['fc1'], ['fc9'], ['fc2'])
    assert str(copied) == ('copied 2 blobs of 1 layer: fc1; not in the file: fc9; '
                           'in the file but not in the net: fc2')
    np.testing.assert_array_equal(renamed.net.params['fc1'][0].data, saved['fc1/0'])
    np.testing.assert_array_equal(renamed.net.params['fc9'][0].data, fresh.net.params['fc9'][0].data)
    assert not np.array_equal(renamed.net.params['fc9'][0].data, saved['fc2/0'])


def test_weights_matching_no_layer_are_refused(snap):
    net = other(('"fc1"', '"fa"'), ('"fc2"', '"fb"')).net
    with pytest.raises(SnapshotError, match=r'no layer of this weights file is in the net, so nothing '
                                            r'would be copied \(the file has fc1, fc2; the net has fa, fb\)'):
        load_weights(net, snap[1])


@pytest.mark.parametrize('old, new, message', [
    ('num_output: 5', 'num_output: 7', r'fc1/0: file has shape \(5, 4\), net has \(7, 4\)\n'
                                       r'  fc1/1: file has shape \(5,\), net has \(7,\)\n'
                                       r'  fc2/0: file has shape \(3, 5\), net has \(3, 7\)'),
    ('num_output: 5', 'num_output: 5 bias_term: false', 'fc1/1: in the file, not in the net'),
])
def test_a_shared_layer_must_match_blob_for_blob(snap, old, new, message):
    net = other((old, new)).net
    before = net.arena.data.copy()
    with pytest.raises(SnapshotError, match=message):
        load_weights(net, snap[1])
    np.testing.assert_array_equal(net.arena.data, before)   # refused before anything is copied


# -- leftovers of killed writers -------------------------------------------------
def dead_pid():
    child = subprocess.Popen([sys.executable, '-c', ''])
    child.wait()
    return child.pid


KILLED_WRITER = '''
import os, signal, sys
import numpy as np
from layerasync.snapshot import atomic_savez
os.replace = lambda source, target: os.kill(os.getpid(), signal.SIGKILL)
atomic_savez(sys.argv[1], {'fc1/0': np.zeros(1000)})
'''


def test_a_writer_killed_mid_write_leaves_no_final_name_and_its_leftover_is_removed(tmp_path):
    root = os.path.dirname(os.path.dirname(layerasync.__file__))
    target = tmp_path / 'run_iter_1.weights.npz'
    killed = subprocess.run([sys.executable, '-c', KILLED_WRITER, str(target)], timeout=120,
                            env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [leftover] = os.listdir(tmp_path)
    assert leftover.startswith(f'.tmp-{socket.gethostname()}-') and not target.exists()
    live = tmp_path / f'.tmp-{socket.gethostname()}-{os.getpid()}-live.npz'
    live.touch()
    make().snapshot(str(tmp_path / 'run'))
    assert sorted(os.listdir(tmp_path)) == [live.name, 'run_iter_0.solverstate.npz',
                                            'run_iter_0.weights.npz']


def test_stale_temporaries_by_pid_and_by_age(tmp_path):
    host, dead = socket.gethostname(), dead_pid()
    old = time.time() - STALE_AFTER - 60
    names = {f'.tmp-{host}-{dead}-a.npz': 'removed: its writer is dead',
             f'.tmp-{host}-{os.getpid()}-b.npz': 'kept: its writer is alive',
             f'.tmp-{host}-{os.getpid()}-c.npz': 'removed: too old (a reused pid)',
             f'.tmp-elsewhere-{dead}-d.npz': "kept: another host's pid cannot be checked",
             f'.tmp-elsewhere-{dead}-e.npz': 'removed: too old',
             '.tmp-f.npz': 'kept: no pid, not old',
             'g.npz': 'kept: not a temporary'}
    for name in names:
        (tmp_path / name).touch()
        if name[-5] in 'ce':
            os.utime(tmp_path / name, (old, old))
    atomic_savez(str(tmp_path / 'w.npz'), {'fc1/0': np.zeros(2)})
    kept = {name for name, why in names.items() if why.startswith('kept')}
    assert set(os.listdir(tmp_path)) == kept | {'w.npz'}


# -- the snapshot to go back to after a divergence -----------------------------------
class Diverged(Exception):
    pass


def diverge(folder):
    """Train the tiny net as the trainer does, a snapshot after every iteration,
    with a learning rate that explodes after iteration 3; (snapshots, the
    iteration whose loss was not finite)."""
    s = make('momentum: 0.9')
    snapshots = []

    def check(loss):
        if not math.isfinite(loss):
            raise Diverged

    try:
        for _ in range(20):
            s.step(1, on_loss=check)
            snapshots.append((s.iter, s.snapshot(str(folder / 'run'))))
            if s.iter == 3:
                s.param.base_lr = 1e30
    except Diverged:
        return snapshots, s.iter
    raise AssertionError('the tiny net did not diverge')


def first_loss(path):
    s = make('momentum: 0.9')
    s.restore(path)
    return s.step(1)


@pytest.mark.filterwarnings('ignore:overflow', 'ignore:invalid value')
def test_the_snapshot_before_the_divergence_is_the_good_one(tmp_path):
    snapshots, diverged_at = diverge(tmp_path)
    assert [it for it, _ in snapshots] == [1, 2, 3, 4] and diverged_at == 4
    trap = snapshots[-1][1]
    weights = np.load(trap.replace('.solverstate.npz', '.weights.npz'))
    assert is_good(trap) and max(np.abs(weights[k]).max() for k in weights.files) > 1e20
    assert not math.isfinite(first_loss(trap))   # finite weights that diverge again on resume
    good = last_good(snapshots, diverged_at)
    assert good == snapshots[2][1] and math.isfinite(first_loss(good))


def test_truncated_or_non_finite_snapshots_are_not_good(tmp_path):
    s = make('momentum: 0.9')
    snapshots = []
    for _ in range(3):
        s.step(1)
        snapshots.append((s.iter, s.snapshot(str(tmp_path / 'run'))))
    assert last_good(snapshots, 4) == snapshots[2][1]
    cut_in_half(snapshots[2][1].replace('.solverstate.npz', '.weights.npz'))
    s.history[0][0] = np.inf   # momentum that would blow up the next update
    s.iter = 2
    s.snapshot(str(tmp_path / 'run'))
    assert not is_good(snapshots[2][1]) and not is_good(snapshots[1][1])
    assert last_good(snapshots, 4) == snapshots[0][1]
    assert last_good(snapshots, 1) is None and last_good([], 4) is None
