"""Signals and stalls under ``mpiexec -n 2`` (Caffe's -sigint_effect / -sighup_effect).

SIGINT to the launcher (Ctrl-C) and SIGTERM to one rank stop every rank at
the same iteration boundary after a snapshot, with one message and an exit
status that says so (128 + the signal); the snapshot resumes. SIGHUP to one
rank writes a snapshot and training goes on; ``--sigint-effect none``
ignores Ctrl-C. A rank stopped with SIGSTOP is named by the stall watchdog of
the rank waiting for it, and the job ends; in a parameter-server job (three
ranks) a stopped server or worker is named the same way, and the others'
answers say where they are. Every wait has a timeout: a rank
that acted alone would hang the other in its next collective.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which('mpiexec', path=BIN)
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason='mpiexec not installed')
TRAIN = [sys.executable, '-m', 'layerasync', 'train', '--solver', 'digits', '--no-progress',
         '--set', 'test_interval=0', '--set', 'display=1', '--set', 'snapshot_prefix="snap/run"']


class Job:
    """``mpiexec -n 2 layerasync train ...`` in ``folder``, its ranks tagged so that
    only processes this test started are signalled."""

    def __init__(self, folder, *extra, iterations=100000, ranks=2, launch=False):
        self.folder, self.tag = folder, f'{os.getpid()}-{time.monotonic_ns()}'
        env = dict(os.environ, OMP_NUM_THREADS='1', LAYERASYNC_SIGNAL_TEST=self.tag)
        # launch: through `layerasync launch`, which runs this mpiexec.
        launcher = ([sys.executable, '-m', 'layerasync', 'launch', '--np', str(ranks),
                     '--mpirun', MPIEXEC, '--', *TRAIN[3:]] if launch else
                    [MPIEXEC, '-n', str(ranks), *TRAIN])
        with open(folder / 'out.txt', 'w') as out, open(folder / 'err.txt', 'w') as err:
            self.process = subprocess.Popen(
                [*launcher, '--set', f'max_iter={iterations}', *extra],
                cwd=folder, env=env, stdout=out, stderr=err)

    def out(self):
        return (self.folder / 'out.txt').read_text()

    def wait_for(self, text, timeout=120):
        deadline = time.time() + timeout
        while text not in self.out():
            assert self.process.poll() is None, (self.folder / 'err.txt').read_text()
            assert time.time() < deadline, f'no {text!r} in the log'
            time.sleep(0.1)

    def ranks(self):
        """{rank: pid} of this job's ranks alive now."""
        found = {}
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                environ = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
            except OSError:
                continue
            if f'LAYERASYNC_SIGNAL_TEST={self.tag}'.encode() in environ:
                for item in environ:
                    if item.startswith(b'PMI_RANK='):
                        found[int(item[9:])] = int(pid)
        return found

    def rank(self, r):
        """The pid of rank ``r``."""
        pid = self.ranks().get(r)
        assert pid is not None, f'rank {r} not found'
        return pid

    def finish(self, timeout=60):
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError('the job did not end: a rank waits for the other') from None
        return code, self.out(), (self.folder / 'err.txt').read_text()


@pytest.mark.parametrize('how', ['SIGINT to mpiexec', 'SIGTERM to rank 1'])
def test_a_stop_signal_snapshots_and_stops_every_rank(tmp_path, how):
    job = Job(tmp_path)
    job.wait_for('Iteration 20,')
    if how == 'SIGINT to mpiexec':
        job.process.send_signal(signal.SIGINT)
        signum = signal.SIGINT
    else:
        os.kill(job.rank(1), signal.SIGTERM)
        signum = signal.SIGTERM
    code, out, err = job.finish()
    assert code == 128 + signum, err
    name = signal.Signals(signum).name
    assert err.count(f'stopped by {name} at iteration') == 1, err
    assert 'Traceback' not in err
    snapshot = err.split('resume with --snapshot ')[1].split()[0]
    assert (tmp_path / snapshot).exists()
    stopped_at = int(snapshot.rsplit('_iter_', 1)[1].split('.')[0])
    resumed = Job(tmp_path, '--snapshot', snapshot, iterations=stopped_at + 5)
    code, out, err = resumed.finish()
    assert code == 0, err
    assert 'Optimization Done.' in out


def test_sigterm_to_the_launcher_ends_every_rank(tmp_path):
    """``kill`` of ``layerasync launch`` (a batch system ending the job) is passed
    on to mpiexec, which ends the ranks: none is left running."""
    job = Job(tmp_path, launch=True)
    job.wait_for('Iteration 20,')
    assert sorted(job.ranks()) == [0, 1]
    job.process.send_signal(signal.SIGTERM)
    code, out, err = job.finish()
    assert code != 0, err
    deadline = time.time() + 10
    while job.ranks() and time.time() < deadline:
        time.sleep(0.1)
    left = job.ranks()
    for pid in left.values():   # leave no orphans behind, even when failing
        os.kill(pid, signal.SIGKILL)
    assert left == {}, f'ranks left running: {left}\n{err}'
    assert 'Traceback' not in err, err


def test_sighup_snapshots_and_goes_on(tmp_path):
    job = Job(tmp_path, iterations=400)
    job.wait_for('Iteration 20,')
    os.kill(job.rank(0), signal.SIGHUP)
    code, out, err = job.finish()
    assert code == 0, err
    snapshots = sorted(p.name for p in (tmp_path / 'snap').glob('*.solverstate.npz'))
    assert len(snapshots) == 2 and 'run_iter_400.solverstate.npz' in snapshots, snapshots
    assert 'Optimization Done.' in out


def test_sigint_effect_none_ignores_ctrl_c(tmp_path):
    job = Job(tmp_path, '--sigint-effect', 'none', iterations=400)
    job.wait_for('Iteration 20,')
    os.kill(job.rank(0), signal.SIGINT)
    os.kill(job.rank(1), signal.SIGINT)
    code, out, err = job.finish()
    assert code == 0, err
    assert 'Optimization Done.' in out


def test_a_stopped_rank_is_named_by_the_stall_watchdog(tmp_path):
    job = Job(tmp_path, '--stall-timeout', '3')
    job.wait_for('Iteration 20,')
    stopped = job.rank(1)
    os.kill(stopped, signal.SIGSTOP)
    started = time.time()
    try:
        code, out, err = job.finish(timeout=40)
    finally:
        try:
            os.kill(stopped, signal.SIGKILL)   # if the abort left it behind
        except ProcessLookupError:
            pass
    assert code != 0
    assert time.time() - started < 3 + 2 + 20, 'the watchdog took too long'
    assert 'rank 0: error: stalled: waited' in err and 'no answer from rank 1' in err, err


@pytest.mark.parametrize('stop, named, answering', [
    (2, 'no answer from rank 2 (server 0)', r'rank 1 \(worker 1\) at iteration \d+, waiting'),
    (1, 'no answer from rank 1 (worker 1)',
     r'rank 2 \(server 0\) at iteration \d+, waiting for the gradients of worker 1'),
])
def test_a_stopped_server_or_worker_of_a_parameter_server_job_is_named(tmp_path, stop, named,
                                                                        answering):
    job = Job(tmp_path, '--strategy', 'ps-sync', '--stall-timeout', '3', ranks=3)
    job.wait_for('Iteration 20,')
    stopped = job.rank(stop)
    os.kill(stopped, signal.SIGSTOP)
    started = time.time()
    try:
        code, out, err = job.finish(timeout=60)
    finally:
        try:
            os.kill(stopped, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert code != 0
    assert time.time() - started < 3 + 2 + 30, 'the watchdog took too long'
    assert 'error: stalled: waited' in err and named in err, err
    assert re.search(answering, err), err
