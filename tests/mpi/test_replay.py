"""Compute replay under MPI: the strategies, the communicator and the updates run
unchanged on replayed layers, so every strategy still equals sync and one process."""
import numpy as np
import pytest

from layerasync.bench import make_solver
from layerasync.replay import replay
from layerasync.strategies import get_strategy
from layerasync.timing import profile_net
from layerasync.trainer import Log, Trainer

_PROFILES = {}


def lenet_profile(comm):
    """One profile for all ranks: rank 0 measures it."""
    if 'lenet' not in _PROFILES:
        profile = None
        if comm.rank == 0:
            solver = make_solver('lenet', 4, 0, 1, prefetch=False)
            profile = profile_net(solver.net, 2)
            solver.close()
        _PROFILES['lenet'] = comm.bcast(profile)
    return _PROFILES['lenet']


def replayed_weights(comm, strategy, profile, iters=5):
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    solver = make_solver('lenet', 4, rank, size, prefetch=False)
    replay(solver.net, profile, speedup=20.0)
    s = get_strategy(strategy, solver, comm, chunk_bytes=65536)
    try:
        Trainer(solver, s, log=Log(quiet=True), progress=False).run(iters)
        return solver.net.arena.data.copy()
    finally:
        solver.close()
        s.close()


@pytest.mark.parametrize('strategy', ['layerwise', 'async-layerwise'])
def test_replayed_strategies_equal_sync_and_one_process(comm, strategy):
    profile = lenet_profile(comm)
    sync = replayed_weights(comm, 'sync', profile)
    weights = replayed_weights(comm, strategy, profile)
    digests = comm.allgather(weights.tobytes())
    assert all(d == digests[0] for d in digests), 'ranks hold different weights'
    np.testing.assert_array_equal(weights, sync)
    # Every rank adds the same gradient pattern: their mean is one process's.
    np.testing.assert_allclose(weights, replayed_weights(None, 'sync', profile),
                               rtol=1e-6, atol=1e-9)


def test_a_straggler_replays_slower_and_only_it(comm, tmp_path):
    import argparse
    import json

    from layerasync._args import replayed_compute
    profile = lenet_profile(comm)
    path = tmp_path / 'lenet.json'
    path.write_text(json.dumps(profile))
    slow = comm.size - 1
    args = argparse.Namespace(compute=('replay', str(path)), compute_speedup=2.0,
                              straggler=(slow, 3.0))
    solver = make_solver('lenet', 4, comm.rank, comm.size, prefetch=False)
    try:
        replayed_compute(args, solver.net, comm, log=lambda *a: None)
        factor = 3.0 if comm.rank == slow else 1.0
        for layer, row in zip(solver.net.layers, profile['layers']):
            assert layer.seconds == pytest.approx(
                (factor * row['forward_ms'] / 2e3, factor * row['backward_ms'] / 2e3)), layer.name
    finally:
        solver.close()
    args.straggler = (comm.size, 3.0)   # every rank refuses it alike: no rank hangs
    solver = make_solver('lenet', 4, comm.rank, comm.size, prefetch=False)
    try:
        with pytest.raises(ValueError, match=f'--straggler {comm.size}:3: there is no rank '
                                             f'{comm.size} in a job of {comm.size} rank'):
            replayed_compute(args, solver.net, comm, log=lambda *a: None)
    finally:
        solver.close()
