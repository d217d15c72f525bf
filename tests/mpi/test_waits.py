"""Waits that leave the core: a rank waiting for a reduction that a peer
delays sleeps (``Backoff``) instead of busy-polling, and still gets the sum."""
import time

import numpy as np
import pytest

from layerasync.comm.backoff import Backoff
from layerasync.comm.mpi import Communicator

DELAY = 0.5   # seconds the last rank computes before it posts


@pytest.mark.parametrize('progress', ['poll', 'thread'])
def test_a_waiting_rank_burns_little_cpu_and_gets_the_sum(comm, progress):
    n = 50_000
    grad = np.full(n, comm.rank + 1, np.float32)
    c = Communicator(comm, [grad], [(0, slice(0, n))], progress=progress)
    late = comm.size - 1
    try:
        comm.Barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        if comm.rank == late:
            time.sleep(DELAY)
        c.post(0)
        c.wait(0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        np.testing.assert_array_equal(grad, comm.size * (comm.size + 1) // 2)
        if comm.rank != late:
            assert wall > DELAY / 2, f'rank {comm.rank} waited only {wall:.3f} s'
            assert cpu < 0.2 * wall, (f'rank {comm.rank} ({progress}) burnt {cpu:.3f} s of CPU '
                                      f'in {wall:.3f} s of waiting')
    finally:
        c.close()


def test_backoff_spins_then_doubles_its_sleep_up_to_the_cap():
    b = Backoff(spin=0.01, max_sleep=4e-3, min_sleep=1e-3)
    start = time.perf_counter()
    b.pause()
    assert b.sleep == 0 and time.perf_counter() - start < 0.01   # spinning: returns at once
    time.sleep(0.01)
    sleeps = []
    for _ in range(4):
        b.pause()
        sleeps.append(b.sleep)
    assert sleeps == [1e-3, 2e-3, 4e-3, 4e-3]
    b.reset()
    b.pause()
    assert b.sleep == 0


@pytest.mark.parametrize('settings, message', [
    (dict(spin=-1), 'back-off spin must be a number of seconds >= 0, not -1'),
    (dict(max_sleep='1ms'), "back-off max_sleep must be a number of seconds >= 0, not '1ms'"),
    (dict(min_sleep=2e-3, max_sleep=1e-3), r'min_sleep \(0.002 s\) exceeds max_sleep \(0.001 s\)'),
])
def test_backoff_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**settings)
