"""The communicator: rank-valued reductions under every setting, several
generations in flight, waits, and posts whose timing differs between ranks."""
import itertools
import os
import time

import numpy as np
import pytest

from layerasync.comm.buckets import make_buckets
from layerasync.comm.mpi import Communicator

# Six "layers" of different sizes, in arena order (backward readiness).
SIZES = [300, 7, 1000, 64, 5, 2500]
LAYERS = [5, 4, 3, 2, 1, 0]   # forward index of each segment: the last layer comes first


def segments():
    out, start = [], 0
    for layer, n in zip(LAYERS, SIZES):
        out.append((layer, slice(start, start + n)))
        start += n
    return out, start


ENGINES = os.environ.get('LAYERASYNC_TEST_PROGRESS', 'poll,thread').split(',')
SETTINGS = [dict(fusion_bytes=f, chunk_bytes=c, max_in_flight=m, priority=p, progress=e)
            for f, c, m, p, e in itertools.product([0, 4096], [0, 512], [1, 3], [False, True],
                                                   ENGINES)]


def ids(s):
    return '-'.join(f'{k}={v}' for k, v in s.items())


def test_buckets_fuse_and_chunk():
    segs, total = segments()
    buckets, chunks = make_buckets(segs, fusion_bytes=4096, chunk_bytes=1024)
    assert [b.layers for b in buckets] == [[5, 4, 3], [2, 1, 0]]
    assert buckets[0].start == 0 and buckets[-1].stop == total
    assert all(c.stop - c.start <= 256 for c in chunks)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    # A chunk holding part of layer 3 is needed as early as layer 3.
    assert chunks[buckets[0].chunks[-1]].priority[0] == 3
    one, _ = make_buckets(segs)
    assert [b.layers for b in one] == [[layer] for layer in LAYERS]
    assert [b.priority for b in one] == LAYERS


@pytest.mark.parametrize('settings', SETTINGS, ids=ids)
def test_rank_valued_sum_in_place(comm, settings):
    segs, total = segments()
    grad = np.empty(total, np.float32)
    c = Communicator(comm, [grad], segs, **settings)
    try:
        for iteration in range(3):
            grad[:] = comm.rank + 1 + iteration
            for b in range(len(c.buckets)):
                c.post(b)
                c.progress()
            for b in reversed(range(len(c.buckets))):   # forward order: the last posted first
                c.wait(b)
            expected = sum(r + 1 + iteration for r in range(comm.size))
            np.testing.assert_array_equal(grad, expected)
        c.wait_all()
    finally:
        c.close()


@pytest.mark.parametrize('priority', [False, True])
@pytest.mark.parametrize('progress', ['poll', 'thread'])
def test_generations_in_flight_use_their_own_buffer(comm, priority, progress):
    segs, total = segments()
    buffers = [np.empty(total, np.float32) for _ in range(3)]
    c = Communicator(comm, buffers, segs, chunk_bytes=1024, max_in_flight=2,
                     priority=priority, progress=progress)
    try:
        for g in range(7):
            buf = buffers[g % 3]
            if g >= 3:   # the buffer is reused: its previous generation must be done
                for b in range(len(c.buckets)):
                    c.wait(b, g - 3)
                np.testing.assert_array_equal(buf, sum(10 * (g - 3) + r for r in range(comm.size)))
            buf[:] = 10 * g + comm.rank
            for b in range(len(c.buckets)):
                c.post(b, g % 3)
        c.wait_all()
        for g in range(4, 7):
            np.testing.assert_array_equal(buffers[g % 3], sum(10 * g + r for r in range(comm.size)))
    finally:
        c.close()


@pytest.mark.parametrize('priority', [False, True])
def test_timing_skew_between_ranks_keeps_the_order(comm, priority):
    """Posts and progress calls at rank-dependent times must not mismatch collectives."""
    segs, total = segments()
    grad = np.empty(total, np.float32)
    c = Communicator(comm, [grad], segs, chunk_bytes=256, max_in_flight=2, priority=priority)
    rng = np.random.default_rng(comm.rank)
    try:
        for iteration in range(4):
            grad[:] = np.arange(total) * (comm.rank + 1) + iteration
            for b in range(len(c.buckets)):
                time.sleep(rng.uniform(0, 2e-3))
                c.post(b)
                for _ in range(rng.integers(0, 3)):
                    c.progress()
            done = set()
            while len(done) < len(c.buckets):
                done.add(c.wait_any([b for b in range(len(c.buckets)) if b not in done]))
            ranks = comm.size * (comm.size + 1) // 2
            np.testing.assert_array_equal(grad, np.arange(total, dtype=np.float32) * ranks
                                          + iteration * comm.size)
    finally:
        c.close()


def test_waiting_for_a_bucket_never_posted_is_an_error(comm):
    segs, total = segments()
    c = Communicator(comm, [np.zeros(total, np.float32)], segs, fusion_bytes=0)
    try:
        with pytest.raises(RuntimeError, match='bucket 2, which was never posted'):
            c.wait(2)
        with pytest.raises(ValueError, match='no bucket 6; this communicator has buckets 0..5'):
            c.wait(6)
    finally:
        c.close()


def test_control_calls(comm):
    segs, total = segments()
    c = Communicator(comm, [np.zeros(total, np.float32)], segs)
    control = c.control   # the communicator's own control channel
    try:
        assert control.allreduce_mean(comm.rank) == pytest.approx((comm.size - 1) / 2)
        np.testing.assert_allclose(control.allreduce_mean(np.array([comm.rank, 1.0])),
                                   [(comm.size - 1) / 2, 1.0])
        a = np.full(4, comm.rank, np.float64)
        control.bcast(a)
        np.testing.assert_array_equal(a, 0)
        assert control.allgather_text(f'r{comm.rank}') == [f'r{r}' for r in range(comm.size)]
    finally:
        c.close()


@pytest.mark.parametrize('threshold, expected', [(0.0, True), (float('inf'), False)])
def test_auto_scheduler_is_chosen_alike_on_every_rank(comm, monkeypatch, threshold, expected):
    """'auto' measures the link at construction and every rank gets the same scheduler,
    reported as a bool in ``settings``; the reductions stay right."""
    import layerasync.comm as comm_package
    monkeypatch.setattr(comm_package, 'PRIORITY_ABOVE', threshold)
    segs, total = segments()
    grad = np.empty(total, np.float32)
    c = Communicator(comm, [grad], segs, chunk_bytes=512, priority='auto', max_in_flight=None)
    try:
        assert c.settings['priority'] is expected and c.scheduler.priority is expected
        assert c.settings['max_in_flight'] == c.scheduler.max_in_flight == (2 if expected else 4)
        assert c.wire_estimate > 0
        assert comm.allgather(c.wire_estimate) == [c.wire_estimate] * comm.size
        grad[:] = comm.rank + 1
        for b in range(len(c.buckets)):
            c.post(b)
        c.wait_all()
        np.testing.assert_array_equal(grad, sum(r + 1 for r in range(comm.size)))
    finally:
        c.close()
