"""The stall watchdog: a wait that lasts too long ends the job, naming who is missing.

A rank that waits for a reduction, a barrier or a parameter server longer
than the limit asks every other rank where it is. Ranks answer from inside
their own waits and progress calls (every wait in ``layerasync.comm`` polls,
see ``backoff``), so a rank that does not answer within a grace period is
stopped (SIGSTOP), dead, or stuck outside MPI. The waiting rank then raises
``StallError`` with what it waited for, how long, and each rank's answer or
silence; the command's error path shows it and ends the job (MPI_Abort).

The limit: ``--stall-timeout SECONDS``, or by default ten times the slowest
iteration seen so far, never below ``FLOOR`` seconds, so a healthy iteration
of any size never trips it. Nothing is sent while nobody stalls: the cost on
the hot path is one ``Test`` of a posted receive per poll and per
progress call.

One watch per process (``install``); the waits find it through ``check``.
A rank that only serves (a parameter server) answers but never asks: its
idle waits for the workers are not stalls, and the workers' own waits for
it are watched.
"""
import time

import numpy as np
from mpi4py import MPI

__all__ = ['StallError', 'StallWatch', 'install', 'uninstall', 'check', 'done', 'answer', 'FLOOR']

FLOOR = 120.0      # seconds: the default limit's lower bound
GRACE = 2.0        # seconds the stalled rank waits for the others' answers
_ASK, _ANSWER = 1, 2

_current = None


class StallError(RuntimeError):
    """A wait outlasted the stall limit; the message says who did not answer."""


class StallWatch:
    """Collective over ``comm`` (every rank builds one and calls ``close``)."""

    def __init__(self, comm, timeout=None, floor=FLOOR, factor=10.0, describe=None):
        if timeout is not None and not timeout > 0:
            raise ValueError(f'--stall-timeout must be a positive number of seconds, not {timeout}')
        self.comm = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.describe = describe or (lambda rank: f'rank {rank}')   # how answers name a rank
        self.timeout, self.floor, self.factor = timeout, floor, factor
        self.slowest, self.iteration, self.last_boundary = 0.0, None, None
        self.waiting_for = None
        self.question = np.zeros(1, np.int64)
        self.probe = self.comm.Irecv(self.question, MPI.ANY_SOURCE, _ASK)

    def limit(self):
        if self.timeout is not None:
            return self.timeout
        return max(self.floor, self.factor * self.slowest)

    def boundary(self, iteration):
        """The trainer reached ``iteration``: remember it and the slowest iteration's time."""
        now = time.perf_counter()
        if self.last_boundary is not None:
            self.slowest = max(self.slowest, now - self.last_boundary)
        self.iteration, self.last_boundary = iteration, now

    def where(self):
        at = f'iteration {self.iteration}' if self.iteration is not None else 'start-up'
        return f'{at}, waiting for {self.waiting_for}' if self.waiting_for else f'{at}, computing'

    def answer(self, where=None):
        """Answer another rank's question, if one came (cheap: one Test).
        ``where``: a function giving this rank's whereabouts instead of
        ``where()``, called only when a question came."""
        status = MPI.Status()
        if self.probe.Test(status):
            self.comm.isend(f'{self.describe(self.rank)} at {(where or self.where)()}',
                            status.Get_source(), _ANSWER)
            self.probe = self.comm.Irecv(self.question, MPI.ANY_SOURCE, _ASK)

    def check(self, started, what):
        """In a wait loop that began at ``started`` (perf_counter) for ``what``."""
        self.waiting_for = what
        self.answer()
        waited = time.perf_counter() - started
        if waited > self.limit():
            raise StallError(self._report(what, waited))

    def _report(self, what, waited):
        peers = [r for r in range(self.size) if r != self.rank]
        for r in peers:
            self.comm.Isend(np.array([self.rank], np.int64), r, _ASK)
        replies = {r: self.comm.irecv(source=r, tag=_ANSWER) for r in peers}
        answers, deadline = {}, time.perf_counter() + GRACE
        while len(answers) < len(peers) and time.perf_counter() < deadline:
            self.answer()
            for r, request in replies.items():
                if r not in answers:
                    done, value = request.test()
                    if done:
                        answers[r] = value
            time.sleep(0.01)
        silent = [r for r in peers if r not in answers]
        lines = [f'stalled: waited {waited:.0f} s for {what} at '
                 f'{self.where().split(",")[0]} (limit {self.limit():.0f} s, --stall-timeout)']
        if silent:
            lines.append(f"no answer from {', '.join(map(self.describe, silent))} within "
                         f'{GRACE:.0f} s: stopped, dead, or stuck outside MPI')
        lines += [answers[r] for r in sorted(answers)]
        return '; '.join(lines)

    def close(self):
        self.probe.Cancel()
        self.probe.Wait()
        self.comm.Free()


def install(watch):
    global _current
    _current = watch


def uninstall():
    global _current
    _current = None


def check(started, what):
    """The installed watch's ``check`` (nothing when none is installed)."""
    if _current is not None:
        _current.check(started, what)


def done():
    """The wait that ``check`` watched is over."""
    if _current is not None:
        _current.waiting_for = None


def answer():
    """Answer a question between layers (nothing when no watch is installed)."""
    if _current is not None:
        _current.answer()
