"""Signals as in Caffe's ``-sigint_effect`` / ``-sighup_effect``.

``SignalEffects(sigint='stop', sighup='snapshot')`` installs handlers that
only *record* a request; the trainer acts on it at an iteration boundary:

- ``stop``: snapshot, then end training (the run is resumable from that
  snapshot, and the command exits with 128 + the signal's number);
- ``snapshot``: snapshot and go on;
- ``none``: ignore the signal.

SIGTERM (what a batch system sends before it kills a job) has SIGINT's
effect. Under MPI the ranks first agree (``comm.vote``) so that all of them
act at the same iteration boundary, whichever ranks the signal reached; one
rank alone snapshotting or leaving would hang the others in their next
collective. A second SIGINT while a stop is pending ends the process at
once (``KeyboardInterrupt``), for a user who does not want to wait.
"""
import signal

__all__ = ['EFFECTS', 'SNAPSHOT', 'STOP', 'SignalEffects', 'Interrupted', 'stopping_signal']

EFFECTS = ('stop', 'snapshot', 'none')
# Request bits, OR-ed over ranks: what to do, and which signal asked for a stop.
SNAPSHOT, STOP = 1, 2
_BY_SIGTERM = 4
_BITS = {'stop': SNAPSHOT | STOP, 'snapshot': SNAPSHOT, 'none': 0}


def stopping_signal(bits):
    """The signal a stop request came from (SIGTERM wins when both asked)."""
    return signal.SIGTERM if bits & _BY_SIGTERM else signal.SIGINT


class Interrupted(Exception):
    """Training stopped at a signal's request, after its snapshot (``signum``: its number)."""

    def __init__(self, signum, iteration, snapshot):
        self.signum, self.iteration, self.snapshot = signum, iteration, snapshot
        name = signal.Signals(signum).name
        resume = f'; resume with --snapshot {snapshot}' if snapshot else ''
        super().__init__(f'stopped by {name} at iteration {iteration}{resume}')


class SignalEffects:
    """Records SIGINT/SIGTERM/SIGHUP as requests (see the module docstring).

    ``install()`` and ``restore()`` bracket training (main thread only);
    ``take()`` returns and clears the request bits.
    """

    def __init__(self, sigint='stop', sighup='snapshot'):
        for name, effect in (('sigint', sigint), ('sighup', sighup)):
            if effect not in EFFECTS:
                raise ValueError(f"--{name}-effect must be one of {', '.join(EFFECTS)}, "
                                 f'not {effect!r}')
        self.bits = {signal.SIGINT: _BITS[sigint], signal.SIGTERM: _BITS[sigint],
                     signal.SIGHUP: _BITS[sighup]}
        self.requests, self.previous = 0, {}

    def install(self):
        for signum in self.bits:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requests & STOP:
            raise KeyboardInterrupt   # the second Ctrl-C: do not wait for the boundary
        bits = self.bits[signum]
        if bits & STOP and signum == signal.SIGTERM:
            bits |= _BY_SIGTERM
        self.requests |= bits

    def take(self):
        requests, self.requests = self.requests, 0
        return requests
