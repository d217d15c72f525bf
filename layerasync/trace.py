"""Timelines: spans recorded during training, written as a Chrome trace.

One process per rank, with tracks (threads, in the trace's terms):

- ``compute``: each layer's forward and backward, the strategy's waits and
  the solver's updates (they all run on the training thread);
- ``comm``: each chunk's allreduce from its post to its completion;
- ``progress``: an instant at every progress call of the ``poll`` engine
  (the link moves only inside MPI calls: their gaps are its idle time);
- ``link``: with ``sample_link(device)``, the bytes the network device sent
  and received, sampled every few milliseconds (Chrome counter events).

Open the file in Perfetto (ui.perfetto.dev) or chrome://tracing, or draw one
iteration with ``layerasync plot timeline FILE``. Every span carries its
iteration, so one iteration can be picked out of a long run.

All ranks of one machine share the monotonic clock; each rank's times are
taken relative to a common start (``start()`` after a barrier), so ranks on
different hosts line up to within the barrier's latency.
"""
import json
import os
import threading
import time

__all__ = ['Trace', 'TracedHooks', 'load_trace', 'load_spans', 'load_samples']

TRACKS = {'compute': 1, 'comm': 2, 'progress': 3, 'link': 4}


class Trace:
    """Collects spans of one rank; ``write`` gathers every rank's into one file."""

    def __init__(self, rank=0):
        self.rank = rank
        self.events = []
        self.origin = time.perf_counter()
        self.iteration = 0
        self.instants = []    # perf_counter times of progress calls
        self._sampler = None

    def start(self):
        self.origin = time.perf_counter()
        self.instants.clear()

    def instant(self, now):
        """A progress call at ``now`` (perf_counter seconds)."""
        self.instants.append(now)

    def sample_link(self, device, interval=0.002):
        """Sample ``device``'s byte counters (``/sys/class/net/DEVICE/statistics``)
        every ``interval`` seconds in a thread, until ``write``."""
        self._sampler = _LinkSampler(device, interval)

    def span(self, track, name, start, end, **args):
        """A span on ``track`` from ``start`` to ``end`` (perf_counter seconds)."""
        self.events.append({
            'ph': 'X', 'name': name, 'pid': self.rank, 'tid': TRACKS[track],
            'ts': round((start - self.origin) * 1e6, 3),
            'dur': round(max(end - start, 0.0) * 1e6, 3),
            'args': {'iteration': self.iteration, **args}})

    def write(self, path, control=None):
        """Write the Chrome trace; with ``control`` (a ``comm.control.Control``),
        rank 0 writes every rank's spans (collective)."""
        events = self.events + [
            {'ph': 'i', 's': 't', 'name': 'progress', 'pid': self.rank, 'tid': TRACKS['progress'],
             'ts': round((t - self.origin) * 1e6, 3)} for t in self.instants]
        if self._sampler is not None:
            events += [{'ph': 'C', 'name': f'{self._sampler.device} bytes', 'pid': self.rank,
                        'tid': TRACKS['link'], 'ts': round((t - self.origin) * 1e6, 3),
                        'args': {'tx': tx, 'rx': rx}} for t, tx, rx in self._sampler.stop()]
            self._sampler = None
        if control is not None and control.size > 1:
            everyone = control.allgather_text(events)
            if control.rank != 0:
                return
            events = [e for rank_events in everyone for e in rank_events]
        ranks = sorted({e['pid'] for e in events} | {self.rank})
        meta = []
        for rank in ranks:
            meta.append({'ph': 'M', 'name': 'process_name', 'pid': rank,
                         'args': {'name': f'rank {rank}'}})
            meta += [{'ph': 'M', 'name': 'thread_name', 'pid': rank, 'tid': tid,
                      'args': {'name': track}} for track, tid in TRACKS.items()]
        with open(path, 'w') as f:
            json.dump({'traceEvents': meta + events, 'displayTimeUnit': 'ms'}, f)


class _LinkSampler:
    """A thread reading a network device's tx and rx byte counters."""

    def __init__(self, device, interval):
        folder = os.path.join('/sys/class/net', device, 'statistics')
        try:
            self._fds = [os.open(os.path.join(folder, f), os.O_RDONLY)
                         for f in ('tx_bytes', 'rx_bytes')]
        except OSError as e:
            known = ', '.join(sorted(os.listdir('/sys/class/net')))
            raise ValueError(f"no network device '{device}' to sample here ({e.strerror}: "
                             f'{folder}); name one of {known}') from None
        self.device, self.interval = device, interval
        # A sample when sampling starts and one when it stops: every span traced
        # in between lies within the samples, however starved the thread was.
        self.samples = [self._read()]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name='layerasync-link')
        self._thread.start()

    def _read(self):
        return time.perf_counter(), *(int(os.pread(fd, 32, 0)) for fd in self._fds)

    def _run(self):
        while not self._done.wait(self.interval):
            self.samples.append(self._read())

    def stop(self):
        self._done.set()
        self._thread.join()
        self.samples.append(self._read())
        for fd in self._fds:
            os.close(fd)
        return self.samples


class TracedHooks:
    """Wraps a strategy's hooks to record each layer's forward and backward.

    The net calls ``before_forward(i)`` just before layer i and
    ``after_backward(i)`` just after layer i's backward, so layer i's forward
    runs from the return of hook i to the call of hook i+1, and its backward
    from the return of the previous ``after_backward`` to the call of its own.
    """

    def __init__(self, strategy, net, trace):
        self.strategy, self.net, self.trace = strategy, net, trace
        self.mark = None

    def before_forward(self, i):
        now = time.perf_counter()
        if i > 0:   # layer i-1's forward ends here (with iter_size > 1 too)
            self._layer('forward', i - 1, self.mark, now)
        self.strategy.before_forward(i)
        self.mark = time.perf_counter()

    def end_forward(self):
        now = time.perf_counter()
        self._layer('forward', len(self.net.layers) - 1, self.mark, now)
        self.strategy.end_forward()
        self.mark = time.perf_counter()

    def after_backward(self, i):
        now = time.perf_counter()
        self._layer('backward', i, self.mark, now)
        self.strategy.after_backward(i)
        self.mark = time.perf_counter()

    def _layer(self, phase, i, start, end):
        layer = self.net.layers[i]
        if getattr(layer, 'replayed', False):   # replay.Replayed: waited, not computed
            self.trace.span('compute', f'{phase} {layer.name} (replayed)', start, end,
                            phase=phase, layer=layer.name, type=layer.type, replayed=True)
        else:
            self.trace.span('compute', f'{phase} {layer.name}', start, end, phase=phase,
                            layer=layer.name, type=layer.type)


def _events(path):
    with open(path) as f:
        data = json.load(f)
    return data['traceEvents'] if isinstance(data, dict) else data


def load_trace(path):
    """A trace written by ``Trace.write``, read once: (``load_spans``'s spans,
    then ``load_samples``'s link samples and progress calls)."""
    events = _events(path)
    return (_spans(events), *_samples(events))


def load_spans(path):
    """The spans of a trace written by ``Trace.write``: a list of dicts with
    rank, track, name, start and end (seconds) and args."""
    return _spans(_events(path))


def load_samples(path):
    """The link samples of a trace: {rank: [(seconds, tx bytes, rx bytes), ...]}, and
    the progress calls: {rank: [seconds, ...]}."""
    return _samples(_events(path))


def _spans(events):
    names = {tid: track for track, tid in TRACKS.items()}
    return [{'rank': e['pid'], 'track': names.get(e['tid'], str(e['tid'])), 'name': e['name'],
             'start': e['ts'] / 1e6, 'end': (e['ts'] + e['dur']) / 1e6, 'args': e.get('args', {})}
            for e in events if e.get('ph') == 'X']


def _samples(events):
    link, calls = {}, {}
    for e in events:
        if e.get('ph') == 'C':
            link.setdefault(e['pid'], []).append((e['ts'] / 1e6, e['args']['tx'], e['args']['rx']))
        elif e.get('ph') == 'i' and e.get('name') == 'progress':
            calls.setdefault(e['pid'], []).append(e['ts'] / 1e6)
    return link, {r: sorted(t) for r, t in calls.items()}
