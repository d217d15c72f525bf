"""Strategies under MPI: the equalities docs/theory.md derives.

- sync, layerwise (all three apply orders), async-layerwise and sharded give
  the same weights, bit for bit, and those of one process at P times the batch
  (sharded above 2 ranks: to rounding, see ``assert_same_iterates``);
- sharded holds 1/P of the solver state on each rank;
- every bucket / chunk / in-flight / scheduler / progress setting keeps that;
- delayed:K equals an independent single-process stale-gradient SGD;
- snapshot and resume (with delayed gradients in flight) is exact;
- ranks that disagree on the net or the settings stop at start-up.

Run with ``mpiexec -n P python -m pytest tests/mpi`` (``make test``: P = 2 and 4); at
size 1 in the serial run. Every expectation is computed from the size of the communicator.
"""
import hashlib
import itertools
import math
import os
from collections import deque

import numpy as np
import pytest
from mpi4py import MPI

from layerasync import models, proto, schema
from layerasync.data import DataOptions
from layerasync.net import load_net_param, set_batch_size
from layerasync.solver import get_solver
from layerasync.strategies import get_strategy
from layerasync.trainer import Log, Trainer

ITERS = 20
ENGINES = os.environ.get('LAYERASYNC_TEST_PROGRESS', 'poll,thread').split(',')


def make_solver(model, batch, rank=0, size=1, solver_extra='momentum: 0.9'):
    net = set_batch_size(load_net_param(models.path(model)), batch)
    param = proto.parse(f'base_lr: 0.01 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 '
                        f'power: 0.75 max_iter: {ITERS} random_seed: 7 {solver_extra}',
                        schema.SolverParameter)
    param.net_param = net
    return get_solver(param, data=DataOptions(rank=rank, world_size=size, synthetic=True))


def train(model, strategy, comm, batch, iters=ITERS, solver_extra='momentum: 0.9', snapshot_at=None,
          resume=None, **settings):
    """Weights after ``iters`` iterations of ``strategy`` on ``comm`` (None: no MPI)."""
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    solver = make_solver(model, batch, rank, size, solver_extra)
    s = get_strategy(strategy, solver, comm, **settings)
    try:
        if resume:
            s.load_state_dict(solver.restore(resume))
        trainer = Trainer(solver, s, log=Log(quiet=True), progress=False)
        if snapshot_at is not None:
            trainer.run(snapshot_at)
            solver.param.snapshot_prefix = snapshot_at_prefix(comm)
            trainer.snapshot()
            return trainer.last_snapshot
        trainer.run(iters)
        return solver.net.arena.data.copy()
    finally:
        solver.close()
        s.close()


def snapshot_at_prefix(comm):
    return os.path.join(shared_dir(comm), 'run')


_DIR = {}


def shared_dir(comm):
    """One temporary directory, named by rank 0 for all ranks."""
    key = comm.py2f()
    if key not in _DIR:
        import tempfile
        name = tempfile.mkdtemp(prefix='layerasync-test-') if comm.rank == 0 else None
        _DIR[key] = comm.bcast(name)
    return _DIR[key]


def same_on_all_ranks(comm, array):
    digest = hashlib.sha1(array.tobytes()).hexdigest()
    assert comm.allgather(digest) == [digest] * comm.size, 'ranks hold different weights'


def assert_same_iterates(strategy, comm, actual, expected, model='lenet', tolerance=1e-4):
    """``actual`` (weights after ``strategy``) equals ``expected`` (after sync) bit
    for bit; for ``sharded`` on more than two ranks, to rounding (each blob
    within ``tolerance``, ``assert_close_per_blob``): its reduce-scatter may add
    the P ranks' gradients in another order than the allreduce does (two terms
    add alike in either order)."""
    if strategy == 'sharded' and comm.size > 2:
        assert_close_per_blob(model, actual, expected, tolerance)
    else:
        np.testing.assert_array_equal(actual, expected, strategy)


STRATEGIES = ['layerwise', 'layerwise:ordered', 'layerwise:lazy', 'async-layerwise', 'sharded']


def reference(comm, model='lenet', batch=2, cache={}):
    """(sync on ``comm`` at ``batch``, one process without MPI at ``batch * size``)."""
    key = (comm.size, model, batch)
    if key not in cache:
        cache[key] = (train(model, 'sync', comm, batch),
                      train(model, 'sync', None, batch * comm.size))
    return cache[key]


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_lenet_strategies_equal_sync_and_one_rank_at_twice_the_batch(comm, strategy):
    on_mpi, one_process = reference(comm)
    weights = train('lenet', strategy, comm, 2, chunk_bytes=65536)
    same_on_all_ranks(comm, weights)
    assert_same_iterates(strategy, comm, weights, on_mpi)
    np.testing.assert_allclose(weights, one_process, rtol=2e-4, atol=2e-6)
    if comm.size == 1:
        np.testing.assert_array_equal(weights, one_process)


@pytest.mark.parametrize('solver_extra', ['momentum: 0.9',
                                          'type: "AdamW" momentum: 0.9 momentum2: 0.99'])
@pytest.mark.parametrize('strategy', ['sync'] + STRATEGIES)
def test_gpt_mini_strategies_equal_sync_and_one_rank_at_twice_the_batch(comm, strategy,
                                                                         solver_extra):
    """The Transformer (Embed, LayerNorm, causal attention, GELU, token-wise
    InnerProduct, SoftmaxWithLoss over (N, T, V)) on synthetic ids: every strategy
    equals sync bit for bit, with SGD and with AdamW. Against one process at P
    times the batch only SGD is compared: Adam divides by the root of the second
    moment, so a rounding of a near-zero gradient sum can move that weight by a
    whole learning rate (measured: 2e-3 at rate 0.01; SGD: 6e-8). The same makes
    sharded at 4 ranks, whose sums round otherwise, differ from sync under AdamW
    by 2e-4 in the attention's in-projection bias (the key bias, whose exact
    gradient is zero: softmax ignores a shift of a whole row), hence 1e-3 there."""
    on_mpi = train('gpt-mini', 'sync', comm, 2, iters=6, solver_extra=solver_extra)
    weights = (on_mpi if strategy == 'sync' else
               train('gpt-mini', strategy, comm, 2, iters=6, solver_extra=solver_extra,
                     chunk_bytes=65536))
    same_on_all_ranks(comm, weights)
    assert_same_iterates(strategy, comm, weights, on_mpi, 'gpt-mini',
                         1e-3 if 'AdamW' in solver_extra else 1e-4)
    if strategy == 'sync' and 'AdamW' not in solver_extra:
        one_process = train('gpt-mini', 'sync', None, 2 * comm.size, iters=6,
                            solver_extra=solver_extra)
        np.testing.assert_allclose(weights, one_process, rtol=2e-4, atol=2e-6)
        if comm.size == 1:
            np.testing.assert_array_equal(weights, one_process)


SETTINGS = [dict(fusion_bytes=f, chunk_bytes=c, max_in_flight=m, priority=p, progress=e)
            for f, c, m, p, e in itertools.product([0, 200000], [0, 65536], [1, 4], [False, True],
                                                   ENGINES)]


@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: '-'.join(f'{v}' for v in s.values()))
def test_every_communication_setting_keeps_the_equality(settings):
    comm = MPI.COMM_WORLD   # COMM_SELF adds nothing here to the size-1 run
    expected = train('lenet', 'sync', comm, 2, iters=8)
    for strategy in ('async-layerwise', 'layerwise:lazy', 'sharded'):
        assert_same_iterates(strategy, comm, train('lenet', strategy, comm, 2, iters=8, **settings),
                             expected)


def test_resnet20_strategies_agree(comm):
    """BatchNorm uses each rank's batch statistics, so only the strategies agree.
    BatchNorm over two images amplifies a rounding difference within a few
    iterations to what a whole iteration more or less moves (1e-3 per blob,
    measured), so sharded at more than two ranks, whose sums round otherwise, is
    compared after 2 iterations (the second reads the momentum history), where
    the weights differ by a few ulps (measured: up to 1.4e-7 at 4 ranks, one
    weight in conv1, since SoftmaxWithLoss runs its own kernel; 1.5e-8 before)
    and a part updated wrongly or not at all would differ by its step (1e-5)."""
    exact = ['sync', 'layerwise:ordered', 'async-layerwise'] + ['sharded'] * (comm.size <= 2)
    runs = {s: train('resnet20', s, comm, 2, chunk_bytes=32768) for s in exact}
    for s, w in runs.items():
        np.testing.assert_array_equal(w, runs['sync'], s)
    if comm.size > 2:
        sharded = train('resnet20', 'sharded', comm, 2, iters=2, chunk_bytes=32768)
        sync = train('resnet20', 'sync', comm, 2, iters=2)
        solver = make_solver('resnet20', 1)
        try:
            for slot in (s for s in solver.slots if s.lr_mult != 0):   # not the statistics
                np.testing.assert_allclose(sharded[slot.view], sync[slot.view], rtol=1e-6,
                                           atol=5e-7, err_msg=slot.key)
        finally:
            solver.close()
    if comm.size == 1:
        np.testing.assert_array_equal(runs['sync'], train('resnet20', 'sync', None, 2))


def test_sharded_holds_a_shard_of_the_solver_state(comm):
    """Each rank keeps Adam's two histories for its parts only (about 1/P of the
    learned parameters); the parts cover every learned element once; closing
    gives the solver its whole histories back."""
    solver = make_solver('resnet20', 2, comm.rank, comm.size,
                         'type: "Adam" momentum: 0.9 momentum2: 0.999')
    s = get_strategy('sharded', solver, comm, chunk_bytes=65536)
    try:
        s.start()
        shard, chunks = s.comm.shard_size, len(s.comm.parts)
        learned = sum(view.stop - view.start for _, view in s._segments())
        assert learned < solver.net.arena.count, 'BatchNorm statistics are not sharded'
        assert [h.size for h in s.history] == [shard, shard]
        assert abs(shard - learned / comm.size) <= chunks
        assert comm.allreduce(shard) == learned
        assert solver.history == []
        s.end_iteration()   # one update of a zero gradient: the shards change
        s.finish()
    finally:
        solver.close()
        s.close()
    assert [h.size for h in solver.history] == [solver.net.arena.count] * 2


def test_sharded_clips_by_the_global_norm(comm):
    """The norm is summed from every rank's shard: the run follows sync's (to the
    rounding of the two sums of squares), and the clip is in force."""
    clipped = 'momentum: 0.9 clip_gradients: 0.05'
    weights = train('lenet', 'sharded', comm, 2, iters=6, solver_extra=clipped)
    same_on_all_ranks(comm, weights)
    np.testing.assert_allclose(weights, train('lenet', 'sync', comm, 2, iters=6,
                                              solver_extra=clipped), rtol=1e-5, atol=1e-7)
    assert not np.allclose(weights, train('lenet', 'sync', comm, 2, iters=6), rtol=1e-3)


@pytest.mark.parametrize('codec, tolerance', [('fp16', 1e-3), ('bf16', 1e-2)])
def test_compressed_strategies_equal_compressed_sync(comm, codec, tolerance):
    """Under --compress every strategy reduces the same values with the same 16-bit
    sums, so each gives sync's iterates under that compression, bit for bit, and
    every rank the same bits; against float32 sync the weights differ by the
    16-bit rounding of the gradients (measured at 2 and 4 ranks: fp16 5e-4, bf16 4e-3
    per blob)."""
    compressed = train('lenet', 'sync', comm, 2, iters=8, compress=codec)
    same_on_all_ranks(comm, compressed)
    for strategy in ('async-layerwise', 'layerwise:lazy'):
        np.testing.assert_array_equal(
            train('lenet', strategy, comm, 2, iters=8, compress=codec, chunk_bytes=65536,
                  priority=True), compressed, strategy)
    exact = train('lenet', 'sync', comm, 2, iters=8)
    assert not np.array_equal(compressed, exact)
    assert_close_per_blob('lenet', compressed, exact, tolerance)


def test_topk_of_everything_is_no_compression(comm):
    """topk:1 sends every entry: the sum of the ranks' gradients, added in rank
    order, which at one and two ranks is the allreduce's, bit for bit."""
    dense = train('lenet', 'async-layerwise', comm, 2, iters=6, compress='topk:1')
    same_on_all_ranks(comm, dense)
    exact = train('lenet', 'sync', comm, 2, iters=6)
    if comm.size > 2:   # P terms added in another order than the allreduce's
        assert_close_per_blob('lenet', dense, exact)
    else:
        np.testing.assert_array_equal(dense, exact)


def test_topk_error_feedback_conserves_the_gradient(comm):
    """Over the iterations a rank sends, in its (index, value) pairs, all of its
    gradients but what its residual still holds: sent + residual = the sum of its
    gradients, per rank; with a ratio of 1% the run still trains alike on every
    rank."""
    from layerasync.comm import compress
    solver = make_solver('lenet', 2, comm.rank, comm.size)
    s = get_strategy('sync', solver, comm, compress='topk:0.01')
    codec = s.comm.codec
    sent = np.zeros(solver.net.arena.count, np.float64)
    own = np.zeros_like(sent)
    start = codec.start

    def recording(mpi_comm, buffer, chunk, key):
        before = codec.residual[chunk.start:chunk.stop] + buffer[chunk.start:chunk.stop]
        own[chunk.start:chunk.stop] += buffer[chunk.start:chunk.stop]
        request = start(mpi_comm, buffer, chunk, key)
        sent[chunk.start:chunk.stop] += before - codec.residual[chunk.start:chunk.stop]
        return request
    codec.start = recording
    try:
        s.start()
        solver.step(5, s)
        s.finish()
        np.testing.assert_allclose(sent + codec.residual, own, rtol=1e-5, atol=1e-6)
        # Unsent: all but at most k entries per chunk and iteration (what was sent
        # last is zero; entries whose gradients were all zero stay zero).
        k = sum(codec.count(c.stop - c.start) for c in s.comm.chunks)
        assert np.count_nonzero(codec.residual) >= np.count_nonzero(own) - 5 * k
        same_on_all_ranks(comm, solver.net.arena.data)
    finally:
        solver.close()
        s.close()
    assert isinstance(codec, compress.TopK)


def test_topk_snapshot_and_resume_are_exact(comm):
    """Each rank's residual goes into the snapshot (rank 0 writes them all) and
    comes back to that rank: resuming continues bit for bit."""
    settings = dict(compress='topk:0.05', chunk_bytes=65536)
    straight = train('lenet', 'async-layerwise', comm, 2, iters=10, **settings)
    path = train('lenet', 'async-layerwise', comm, 2, snapshot_at=4, **settings)
    resumed = train('lenet', 'async-layerwise', comm, 2, iters=10, resume=path, **settings)
    np.testing.assert_array_equal(resumed, straight)


def test_powersgd_sends_small_blobs_dense_and_conserves_the_gradient(comm):
    """A rank larger than every matrix leaves all blobs dense: the uncompressed
    iterates (bit for bit at 1 and 2 ranks). At rank 2 the factors approximate
    the sum, and error feedback keeps what was not sent: per rank, the sum of the
    approximations divided by P plus the residual is the sum of its gradients."""
    dense = train('lenet', 'sync', comm, 2, iters=4, compress='powersgd:1000')
    exact = train('lenet', 'sync', comm, 2, iters=4)
    if comm.size > 2:
        assert_close_per_blob('lenet', dense, exact)
    else:
        np.testing.assert_array_equal(dense, exact)
    solver = make_solver('lenet', 2, comm.rank, comm.size)
    s = get_strategy('async-layerwise', solver, comm, compress='powersgd:2')
    codec = s.comm.codec
    own = np.zeros(solver.net.arena.count, np.float64)
    approx = np.zeros_like(own)
    start, finish = codec.start, codec.finish

    def recording_start(mpi_comm, buffer, chunk, key):
        own[chunk.start:chunk.stop] += buffer[chunk.start:chunk.stop]
        return start(mpi_comm, buffer, chunk, key)

    def recording_finish(mpi_comm, buffer, chunk, key):
        more = finish(mpi_comm, buffer, chunk, key)
        if more is None:
            approx[chunk.start:chunk.stop] += buffer[chunk.start:chunk.stop] / comm.size
        return more
    codec.start, codec.finish = recording_start, recording_finish
    try:
        s.start()
        solver.step(4, s)
        s.finish()
        same_on_all_ranks(comm, solver.net.arena.data)
        matrices = [v for v, shape in codec.blobs if codec._compressed(*codec._matrix(shape))]
        assert matrices, 'lenet has matrices wider than rank 2'
        for view in matrices:
            np.testing.assert_allclose(approx[view] + codec.residual[view], own[view],
                                       rtol=1e-4, atol=1e-6)
        assert s.comm.sent_bytes < 4 * 2 * solver.net.arena.data.nbytes * 0.2   # far below float32
    finally:
        solver.close()
        s.close()


def test_powersgd_snapshot_and_resume_are_exact(comm):
    """The residuals (each rank's) and the factors Q (shared) go into the snapshot."""
    settings = dict(compress='powersgd:2')
    straight = train('lenet', 'async-layerwise', comm, 2, iters=8, **settings)
    path = train('lenet', 'async-layerwise', comm, 2, snapshot_at=3, **settings)
    resumed = train('lenet', 'async-layerwise', comm, 2, iters=8, resume=path, **settings)
    np.testing.assert_array_equal(resumed, straight)


@pytest.mark.parametrize('strategy, compress, message', [
    ('sharded', 'bf16', 'not compressed'), ('local-sgd:2', 'bf16', 'not compressed'),
    ('delayed:1', 'powersgd:2', 'use it with sync, layerwise or async-layerwise')])
def test_compression_is_refused_where_it_does_not_apply(comm, strategy, compress, message):
    solver = make_solver('lenet', 2, comm.rank, comm.size)
    try:
        with pytest.raises(ValueError, match=f"--compress {compress}: .*{message}"):
            get_strategy(strategy, solver, comm, compress=compress)
    finally:
        solver.close()


def test_local_sgd_every_step_is_sync(comm):
    """local-sgd:1 averages the weights after each step: sync's iterates for SGD
    with momentum, to rounding (bit for bit on one rank)."""
    weights = train('lenet', 'local-sgd:1', comm, 2, chunk_bytes=65536)
    same_on_all_ranks(comm, weights)
    on_mpi, _ = reference(comm)
    if comm.size == 1:
        np.testing.assert_array_equal(weights, on_mpi)
    assert_close_per_blob('lenet', weights, on_mpi)


def test_local_sgd_averages_every_h_steps(comm):
    """H = 4: the ranks agree after 20 = 5 H iterations, not with sync (but for
    one rank); the outer Nesterov step of an averaging point is DiLoCo's
    w0 - 0.7 (d + 0.9 d) with d = w0 - (the average), v starting at 0."""
    weights = train('lenet', 'local-sgd:4', comm, 2)
    same_on_all_ranks(comm, weights)
    on_mpi, _ = reference(comm)
    if comm.size == 1:
        np.testing.assert_array_equal(weights, on_mpi)
    else:
        assert not np.allclose(weights, on_mpi, rtol=1e-4, atol=1e-6)
    start = train('lenet', 'sync', comm, 2, iters=0)
    average = train('lenet', 'local-sgd:4', comm, 2, iters=4)
    outer = train('lenet', 'local-sgd:4+outer=nesterov', comm, 2, iters=4)
    same_on_all_ranks(comm, outer)
    d = start.astype(np.float64) - average
    np.testing.assert_allclose(outer, start - 0.7 * (d + 0.9 * d), rtol=1e-5, atol=1e-7)


def test_local_sgd_names_a_bad_period():
    from layerasync.strategies import parse_strategy
    for bad, message in [('local-sgd', 'local-sgd:H needs a period H >= 1'),
                         ('local-sgd:0', 'local-sgd:H needs a period H >= 1'),
                         ('local-sgd:2+outer=adam', 'the only option is \\+outer=RULE'),
                         ('local-sgd:2+outer=nesterov:1:2', 'outer momentum in \\[0, 1\\)'),
                         ('local-sgd:2+outer=nesterov:x', 'the outer rate must be a number')]:
        with pytest.raises(ValueError, match=message):
            parse_strategy(bad)
    assert parse_strategy('local-sgd:3')[1][0] == 3
    outer = parse_strategy('local-sgd:3+outer=nesterov:1:0.5')[1][1]
    assert (outer.rule, outer.lr, outer.momentum) == ('nesterov', 1.0, 0.5)
    assert parse_strategy('local-sgd:3+outer=nesterov')[1][1].lr == 0.7


def stale_sgd(model, batch, delay, iters, momentum):
    """An independent single-process SGD whose step at t applies the gradient of t - delay."""
    solver = make_solver(model, batch, solver_extra=f'momentum: {momentum}')
    net, p = solver.net, solver.param
    w = net.arena.data
    h = np.zeros_like(w)
    queue = deque()
    try:
        for t in range(iters):
            net.forward()
            net.backward()
            queue.append(net.arena.diff.copy())
            net.clear_param_diffs()
            if len(queue) > delay:
                g = queue.popleft()
                rate = p.base_lr * (1 + p.gamma * t) ** -p.power
                for i in net.param_layers:
                    for view, lr_mult, decay_mult in ((s.view, s.lr_mult, s.decay_mult)
                                                     for s in solver.slots_of[i]):
                        h[view] = momentum * h[view] + rate * lr_mult * (
                            g[view] + p.weight_decay * decay_mult * w[view])
                        w[view] -= h[view]
        return w.copy()
    finally:
        solver.close()


def assert_close_per_blob(model, actual, expected, tolerance=1e-4):
    """Each parameter blob within ``tolerance`` of ``expected`` in relative 2-norm.

    Two summation orders (P ranks' gradients summed, or one process's GEMM over
    P times the batch) can flip a ReLU whose input is within rounding of zero;
    that unit's row then differs by far more than rounding, elementwise, while
    the blob stays within ~1e-5. A gradient applied one iteration early or late
    moves every blob by more than 4e-3 here: the tolerance sits between.
    """
    solver = make_solver(model, 1)
    try:
        for i in solver.net.param_layers:
            for k, slot in enumerate(solver.slots_of[i]):
                a, e = actual[slot.view], expected[slot.view]
                error = float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))
                assert error < tolerance, (f'layer {solver.net.layers[i].name!r} blob {k}: '
                                           f'relative error {error:.2e} >= {tolerance:.0e}')
    finally:
        solver.close()


@pytest.mark.parametrize('delay, momentum', [(1, 0.0), (2, 0.9)])
def test_delayed_equals_stale_gradient_sgd(comm, delay, momentum):
    weights = train('lenet', f'delayed:{delay}', comm, 2, solver_extra=f'momentum: {momentum}',
                    chunk_bytes=65536)
    same_on_all_ranks(comm, weights)
    expected = stale_sgd('lenet', 2 * comm.size, delay, ITERS, momentum)
    assert_close_per_blob('lenet', weights, expected)
    first_k = train('lenet', f'delayed:{delay}', comm, 2, iters=delay)
    np.testing.assert_array_equal(first_k, train('lenet', 'sync', comm, 2, iters=0),
                                  'no update during the first K iterations')


@pytest.mark.parametrize('strategy', ['async-layerwise', 'delayed:2', 'sharded'])
def test_snapshot_and_resume_are_exact(comm, strategy):
    straight = train('lenet', strategy, comm, 2, iters=12, chunk_bytes=65536)
    path = train('lenet', strategy, comm, 2, snapshot_at=5, chunk_bytes=65536)
    resumed = train('lenet', strategy, comm, 2, iters=12, resume=path, chunk_bytes=65536)
    np.testing.assert_array_equal(resumed, straight)


def test_ranks_with_different_settings_stop_at_start(comm):
    if comm.size == 1:
        pytest.skip('needs two ranks')
    solver = make_solver('lenet', 2, comm.rank, comm.size)
    s = get_strategy('layerwise', solver, comm, max_in_flight=1 + comm.rank)
    try:
        with pytest.raises(ValueError, match=r"rank 1 differs from rank 0: rank 0 has setting "
                                             r"max_in_flight = 1, rank 1 has setting max_in_flight = 2"):
            s.start()
    finally:
        solver.close()
        s.close()
    MPI.COMM_WORLD.Barrier()


def test_trace_records_layers_waits_and_chunks(comm, tmp_path_factory):
    from layerasync.plot import plot_timeline, timeline_summary
    from layerasync.trace import Trace, load_samples, load_spans
    trace = Trace(comm.rank)
    trace.sample_link('lo', interval=0.001)
    solver = make_solver('lenet', 2, comm.rank, comm.size)
    s = get_strategy('async-layerwise', solver, comm, trace=trace, chunk_bytes=65536)
    try:
        Trainer(solver, s, log=Log(quiet=True), progress=False, trace=trace).run(3)
        path = os.path.join(shared_dir(comm), f'trace{comm.size}.json')
        trace.write(path, s.control)
    finally:
        solver.close()
        s.close()
    comm.Barrier()
    spans = load_spans(path)
    assert {sp['rank'] for sp in spans} == set(range(comm.size))
    names = {sp['name'] for sp in spans if sp['rank'] == 0}
    assert {'forward conv1', 'backward conv1', 'forward loss', 'backward ip2'} <= names
    assert any(n.startswith('wait b') for n in names) and any(n.startswith('update b') for n in names)
    chunks = [sp for sp in spans if sp['track'] == 'comm']
    assert chunks and all(sp['end'] >= sp['start'] for sp in chunks)
    link, calls = load_samples(path)
    assert set(link) == set(calls) == set(range(comm.size))
    assert all(b[1] >= a[1] and b[0] > a[0] for samples in link.values()
               for a, b in zip(samples, samples[1:])), 'byte counters only grow'
    if comm.rank == 0:
        png = plot_timeline(path, path.replace('.json', '.png'), iteration=1)
        assert os.path.getsize(png) > 10000
        summary = timeline_summary(path, iteration=1).splitlines()
        assert summary[0] == 'iteration 1:' and len(summary) == 1 + comm.size
        assert all('longest gap between progress calls' in line and 'MB/s' in line
                   for line in summary[1:]), summary


def test_sampling_a_missing_network_device_names_it():
    from layerasync.trace import Trace
    with pytest.raises(ValueError, match="no network device 'nosuchdev0'.*name one of .*lo"):
        Trace().sample_link('nosuchdev0')


def test_bench_rows_follow_their_definitions(comm):
    """Each row's derived columns recomputed from its own fields; the same rows on every
    rank; the bytes each row sends. (No assertion compares measured times with each
    other: the machine may be shared.)"""
    from layerasync.bench import format_rows, run_bench
    names = ['sync', 'async-layerwise', 'delayed:1', 'sharded', 'local-sgd:2']
    rows = run_bench(comm, 'lenet', batch=2, strategies=','.join(names), iterations=2, warmup=1,
                     rounds=3, log=lambda *a: None, chunk_bytes=65536)
    assert comm.allgather(rows) == [rows] * comm.size, 'ranks report different rows'
    assert [r['row'] for r in rows] == ['compute', 'comm'] + names
    by_row = {r['row']: r for r in rows}
    compute, comm_ms = by_row['compute']['ms_per_iter'], by_row['comm']['ms_per_iter']
    for r in rows:
        where = r['row']
        assert math.isfinite(r['ms_per_iter']) and r['ms_per_iter'] > 0, where
        assert r['iters_per_s'] == pytest.approx(1e3 / r['ms_per_iter']), where
        assert (r['compute_ms'], r['comm_ms']) == (compute, comm_ms), where
        assert (r['model'], r['batch'], r['ranks'], r['servers'], r['chunk_bytes']) == (
            'lenet', 2, comm.size, 0, 65536), where
        if where in names:
            assert r['vs_bound'] == pytest.approx(r['ms_per_iter'] / max(compute, comm_ms)), where
            assert r['vs_sync'] == pytest.approx(r['ms_per_iter'] / by_row['sync']['ms_per_iter'])
            hidden = (compute + comm_ms - r['ms_per_iter']) / comm_ms   # may be clipped to [0, 1]
            assert r['overlap'] in (pytest.approx(hidden), pytest.approx(min(1, max(0, hidden)))), \
                (where, r['overlap'], hidden)
        else:
            assert (r['overlap'], r['vs_bound'], r['vs_sync']) == ('', '', ''), where
    # Bytes sent: an allreduce of every gradient per iteration (a reduce-scatter
    # and an all-gather for sharded, the same bytes), half of one for local-sgd:2.
    solver = make_solver('lenet', 1)
    allreduce = 2 * (comm.size - 1) / comm.size * solver.net.arena.data.nbytes / 1e6
    solver.close()
    expected = {'compute': '', 'local-sgd:2': pytest.approx(allreduce / 2)}
    for r in rows:
        assert r['sent_mb'] == expected.get(r['row'], pytest.approx(allreduce)), r['row']
    table = format_rows(rows)
    assert f'{comm.size} ranks, batch 2 per rank' in table
    assert all(f'\n{name} ' in table for name in names), table
