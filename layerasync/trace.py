"""Timelines: spans recorded during training, written as a Chrome trace.

One process per rank, with tracks (threads, in the trace's terms):

- ``compute``: each layer's forward and backward, the strategy's waits and
  the solver's updates (they all run on the training thread);
- ``comm``: each chunk's allreduce from its post to its completion.

Open the file in Perfetto (ui.perfetto.dev) or chrome://tracing, or draw one
iteration with ``layerasync plot timeline FILE``. Every span carries its
iteration, so one iteration can be picked out of a long run.

All ranks of one machine share the monotonic clock; each rank's times are
taken relative to a common start (``start()`` after a barrier), so ranks on
different hosts line up to within the barrier's latency.
"""
import json
import time

__all__ = ['Trace', 'TracedHooks', 'load_spans']

TRACKS = {'compute': 1, 'comm': 2}


class Trace:
    """Collects spans of one rank; ``write`` gathers every rank's into one file."""

    def __init__(self, rank=0):
        self.rank = rank
        self.events = []
        self.origin = time.perf_counter()
        self.iteration = 0

    def start(self):
        self.origin = time.perf_counter()

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
        events = self.events
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
        self.trace.span('compute', f'{phase} {layer.name}', start, end, phase=phase,
                        layer=layer.name, type=layer.type)


def load_spans(path):
    """The spans of a trace written by ``Trace.write``: a list of dicts with
    rank, track, name, start and end (seconds) and args."""
    with open(path) as f:
        data = json.load(f)
    events = data['traceEvents'] if isinstance(data, dict) else data
    names = {tid: track for track, tid in TRACKS.items()}
    return [{'rank': e['pid'], 'track': names.get(e['tid'], str(e['tid'])), 'name': e['name'],
             'start': e['ts'] / 1e6, 'end': (e['ts'] + e['dur']) / 1e6, 'args': e.get('args', {})}
            for e in events if e.get('ph') == 'X']
