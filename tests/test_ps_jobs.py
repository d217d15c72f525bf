"""Parameter-server jobs end to end: ``mpiexec -n 3 layerasync train --strategy ps-*``
(2 workers, 1 server) trains, and an error on a worker or on the server ends the
whole job within seconds, with the error and its rank on stderr, instead of
leaving the other ranks waiting for messages that never come."""
import os
import shutil
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which('mpiexec', path=BIN)
LAYERASYNC = [sys.executable, '-m', 'layerasync']
ENV = dict(os.environ, OMP_NUM_THREADS='1')
TRAIN = ['train', '--solver', 'lenet', '--set', 'max_iter=5', '--set', 'test_initialization=false',
         '--no-progress']

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason='mpiexec not installed')


def job(*ranks, cwd, timeout=90):
    """Run an MPMD job, one argument list per rank; returns (result, seconds)."""
    command = [MPIEXEC]
    for k, args in enumerate(ranks):
        command += ([':'] if k else []) + ['-n', '1', *LAYERASYNC, *args]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    return out, time.perf_counter() - start


def assert_job_failed(out, seconds, *messages):
    """The job ended with an error, within a minute, each message on stderr."""
    assert out.returncode != 0
    for message in messages:
        assert message in out.stderr
    assert seconds < 60


def test_ps_jobs_train_and_report_staleness(tmp_path):
    args = TRAIN + ['--synthetic', '--set', 'display=2', '--set', 'snapshot_after_train=false']
    out, _ = job(*[args + ['--strategy', 'ps-async', '--staleness', '1']] * 3, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'strategy ps-async, 2 ranks' in out.stdout and 'ps-async staleness = {' in out.stdout
    assert 'Optimization Done.' in out.stdout


def test_a_failing_worker_ends_the_job(tmp_path):
    """Worker 1 cannot find its data; worker 0 and the server would wait for it forever."""
    good = TRAIN + ['--strategy', 'ps-sync', '--synthetic']
    bad = TRAIN + ['--strategy', 'ps-sync', '--data-root', str(tmp_path / 'nowhere')]
    out, seconds = job(good, bad, good, cwd=tmp_path)
    assert_job_failed(out, seconds, 'rank 1: error:', 'nowhere')


def test_a_failing_server_ends_the_job(tmp_path):
    """The server (the last rank) cannot run ps-async with Adam; the workers would wait."""
    good = TRAIN + ['--strategy', 'ps-async', '--synthetic']
    out, seconds = job(good, good, good + ['--set', 'type="Adam"'], cwd=tmp_path)
    assert_job_failed(out, seconds, 'rank 2: error: ps-async', 'not Adam')


def test_a_server_that_differs_stops_every_rank_at_start(tmp_path):
    good = TRAIN + ['--strategy', 'ps-sync', '--synthetic']
    out, seconds = job(good, good, good + ['--set', 'momentum=0.5'], cwd=tmp_path)
    assert_job_failed(out, seconds, 'rank 2 (server 0) differs from rank 0',
                      'solver.momentum = 0.5')


def test_workers_failing_mid_run_take_the_server_down(tmp_path):
    """The loss diverges on the workers after a few iterations, while the server is serving."""
    args = TRAIN + ['--strategy', 'ps-sync', '--synthetic', '--set', 'base_lr=1e8',
                    '--set', 'max_iter=200']
    out, seconds = job(args, args, args, cwd=tmp_path)
    assert_job_failed(out, seconds, 'not finite')
