"""Dropout under MPI: P ranks at batch B equal one process at batch P*B.

The digits net with a Dropout layer, on the embedded digits: every allreduce
strategy on P ranks gives the weights of one process at P times the batch
(to float32 rounding; exactly at one rank), because each rank draws the masks
of its own samples, keyed by their stream positions. The ranks' masks are
the slices of the one-process mask, and differ from each other.

Run with ``mpiexec -n P python -m pytest tests/mpi``; at size 1 in the serial run.
"""
import hashlib

import numpy as np
import pytest

from layerasync import models, proto, schema
from layerasync.data import DataOptions
from layerasync.net import load_net_param, set_batch_size
from layerasync.solver import get_solver
from layerasync.strategies import get_strategy
from layerasync.trainer import Log, Trainer

ITERS = 8
BATCH = 4
NET = open(models.path('digits')).read().replace(
    'layer {\n  name: "ip2"',
    'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" '
    'dropout_param { dropout_ratio: 0.5 } }\nlayer {\n  name: "ip2"')


def make_solver(batch, rank=0, size=1):
    param = proto.parse('base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
                        'random_seed: 9', schema.SolverParameter)
    param.net_param = set_batch_size(load_net_param(NET), batch)
    return get_solver(param, data=DataOptions(rank=rank, world_size=size, prefetch=False))


def train(strategy, comm, batch, iters=ITERS):
    """Weights after ``iters`` iterations of ``strategy`` on ``comm`` (None: no MPI)."""
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    solver = make_solver(batch, rank, size)
    s = get_strategy(strategy, solver, comm)
    try:
        Trainer(solver, s, log=Log(quiet=True), progress=False).run(iters)
        return solver.net.arena.data.copy()
    finally:
        solver.close()
        s.close()


def first_masks(batch, rank=0, size=1):
    """The dropout layer's keep mask (one row per sample) after one forward pass."""
    solver = make_solver(batch, rank, size)
    try:
        solver.net.forward()
        return solver.net.layer_dict['drop'].mask.reshape(batch, -1) != 0
    finally:
        solver.close()


_ONE_PROCESS = {}


def one_process(size):
    """One process without MPI at ``BATCH * size``, trained with sync."""
    if size not in _ONE_PROCESS:
        _ONE_PROCESS[size] = train('sync', None, BATCH * size)
    return _ONE_PROCESS[size]


@pytest.mark.parametrize('strategy', ['sync', 'layerwise', 'layerwise:ordered', 'layerwise:lazy',
                                      'async-layerwise'])
def test_ranks_at_batch_b_equal_one_process_at_p_times_b(comm, strategy):
    weights = train(strategy, comm, BATCH)
    digest = hashlib.sha1(weights.tobytes()).hexdigest()
    assert comm.allgather(digest) == [digest] * comm.size, 'ranks hold different weights'
    expected = one_process(comm.size)
    if comm.size == 1:
        np.testing.assert_array_equal(weights, expected)
    else:
        np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)


def test_each_rank_draws_the_masks_of_its_own_samples(comm):
    mine = first_masks(BATCH, comm.rank, comm.size)
    whole = first_masks(BATCH * comm.size)
    np.testing.assert_array_equal(mine, whole[comm.rank * BATCH:(comm.rank + 1) * BATCH])
    rows = comm.allgather(mine)
    distinct = {row.tobytes() for masks in rows for row in masks}
    assert len(distinct) == BATCH * comm.size, 'two samples (on one rank or two) drew one mask'
