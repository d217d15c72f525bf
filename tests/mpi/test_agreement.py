"""Ranks that would make different collective calls stop at start-up, together.

Each case gives the last rank a different value of one thing that shapes the
schedule of collectives (a solver field, the resume point, the seed, the data
source, tracing) and expects every rank to raise the same ``AgreedError``
naming it, instead of a hang at the first test, snapshot or iteration where
the ranks part. One body for every rank count; at one rank nothing can
disagree, and the run must simply train.
"""
import pytest
from mpi4py import MPI

from layerasync import models, proto, schema
from layerasync.comm.control import AgreedError
from layerasync.data import DataOptions
from layerasync.net import load_net_param, set_batch_size
from layerasync.solver import get_solver
from layerasync.strategies import get_strategy
from layerasync.trainer import Log, Trainer

BASE = 'base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 2 random_seed: 3 test_iter: 1'

# name -> (the odd rank's solver text, its data options, its seed, what the message names)
CASES = {
    'snapshot': (BASE + ' snapshot: 1', {}, None, 'solver.snapshot = 1'),
    'test_interval': (BASE + ' test_interval: 1', {}, None, 'solver.test_interval = 1'),
    'momentum': (BASE.replace('0.9', '0.8'), {}, None, 'solver.momentum = 0.8'),
    'seed': (BASE, {}, 11, 'trainer: seed 11'),
    'synthetic': (BASE, {'synthetic': False}, None, 'trainer: data synthetic = False'),
}


def make(comm, text, data, seed):
    param = proto.parse(text, schema.SolverParameter)
    param.net_param = set_batch_size(load_net_param(models.path('digits')), 4)
    options = DataOptions(rank=comm.rank, world_size=comm.size, synthetic=True, prefetch=False)
    options = DataOptions(**{**options.__dict__, **data})
    return get_solver(param, seed=seed, data=options)


def run(comm, odd):
    text, data, seed, _ = CASES[odd] if odd else (BASE, {}, None, None)
    solver = make(comm, text, data, seed)
    strategy = get_strategy('sync', solver, comm)
    try:
        Trainer(solver, strategy, log=Log(quiet=True), progress=False).run()
        return solver
    finally:
        solver.close()
        strategy.close()


@pytest.mark.parametrize('case', sorted(CASES))
def test_a_rank_that_differs_stops_every_rank(comm, case):
    last = comm.rank == comm.size - 1 and comm.size > 1
    if comm.size == 1:
        assert run(comm, None).iter == 2
        return
    expected = CASES[case][3]
    with pytest.raises(AgreedError, match=rf'rank {comm.size - 1} differs from rank 0') as error:
        run(comm, case if last else None)
    assert f'rank {comm.size - 1} has {expected}' in str(error.value)
    MPI.COMM_WORLD.Barrier()


def test_resuming_on_one_rank_only_stops_every_rank(comm, tmp_path_factory):
    folder = comm.bcast(str(tmp_path_factory.mktemp('resume')) if comm.rank == 0 else None)
    solver = make(comm, BASE, {}, None)
    strategy = get_strategy('sync', solver, comm)
    try:
        Trainer(solver, strategy, log=Log(quiet=True), progress=False).run()
        snapshot = solver.snapshot(f'{folder}/run') if comm.rank == 0 else None
        snapshot = comm.bcast(snapshot)
    finally:
        solver.close()
        strategy.close()
    solver = make(comm, BASE.replace('max_iter: 2', 'max_iter: 4'), {}, None)
    if comm.rank == comm.size - 1:
        solver.restore(snapshot)
    strategy = get_strategy('sync', solver, comm)
    try:
        trainer = Trainer(solver, strategy, log=Log(quiet=True), progress=False)
        if comm.size == 1:
            trainer.run()
            assert solver.iter == 4
            return
        with pytest.raises(AgreedError, match=rf'rank {comm.size - 1} has trainer: resume at '
                                              r'iteration 2'):
            trainer.run()
    finally:
        solver.close()
        strategy.close()
    MPI.COMM_WORLD.Barrier()
