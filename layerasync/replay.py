"""Compute replay: every layer takes the time a profile measured, without computing.

Two cores cannot compute for sixteen ranks, but they can carry sixteen ranks'
real communication if the computation is replayed. ``replay(net, profile)``
replaces each layer of ``net`` by a ``Replayed`` stand-in (the one seam: the
net's layer list) whose forward and backward wait for the layer's measured
time, divided by ``speedup``, and call the net's progress hook as often as
the real layer did (``forward_calls``/``backward_calls`` of the profile,
between equal slices of the time), so a ``poll`` engine advances in-flight
reductions where it would. Backward adds a fixed, deterministic pattern to
each parameter gradient, so the gradient arena holds real bytes: the
communicator, the strategies, the solver's updates and MPI run unchanged.

Waiting sleeps and spins only for the last ``SPIN`` seconds: the cores stay
free for the other ranks, the progress thread and the TCP stack. What replay
does not capture: contention for memory bandwidth and caches between ranks
(a replayed rank touches almost no memory), the compute time a progress
thread or the network stack steals from a real layer on busy cores, and data
loading (the Data layer is replayed too).

A profile is what ``layerasync time --json`` writes; its layers must be the
net's, in order, at the net's batch.
"""
import json
import time

import numpy as np

__all__ = ['Replayed', 'replay', 'load_profile', 'ReplayError', 'SPIN']

SPIN = 2e-4          # seconds of a wait spent spinning, for the precision sleep lacks
_PATTERN = 1e-3      # the scale of the gradient pattern: small, so replayed training stays finite


class ReplayError(ValueError):
    """A profile that cannot drive a replay of this net."""


def load_profile(path):
    """The profile at ``path`` (``layerasync time --json``), checked for what replay reads."""
    try:
        with open(path) as f:
            profile = json.load(f)
    except OSError as e:
        raise ReplayError(f'{path}: cannot read the profile: {e.strerror or e}') from None
    except json.JSONDecodeError as e:
        raise ReplayError(f'{path}:{e.lineno}: not a JSON profile ({e.msg}); write one with '
                          'layerasync time --model M --json FILE') from None
    layers = profile.get('layers') if isinstance(profile, dict) else None
    if not isinstance(layers, list) or 'batch' not in profile:
        raise ReplayError(f"{path}: a profile holds 'batch' and 'layers' (layerasync time "
                          '--json writes one)')
    for k, layer in enumerate(layers):
        for key in ('name', 'forward_ms', 'backward_ms'):
            if key not in layer:
                raise ReplayError(f"{path}: layer {k} of the profile has no '{key}'")
        for key in ('forward_ms', 'backward_ms'):
            if not (isinstance(layer[key], (int, float)) and 0 <= layer[key] < float('inf')):
                raise ReplayError(f"{path}: layer '{layer['name']}' {key} is {layer[key]!r}; "
                                  'it must be a time >= 0 in milliseconds')
    profile['path'] = path
    return profile


def _wait_until(deadline):
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        if left > SPIN:
            time.sleep(left - SPIN)


def _pattern(blob, layer_index, k):
    """A deterministic gradient for parameter blob k of layer ``layer_index``."""
    rng = np.random.default_rng([0x5245504C, layer_index, k])
    values = rng.random(blob.shape, dtype=np.float32)
    values -= 0.5
    values *= 2 * _PATTERN
    return values.astype(blob.diff.dtype, copy=False)


class Replayed:
    """Layer ``layer`` replayed: ``forward`` and ``backward`` take ``seconds``
    (forward, backward) and call ``progress`` ``calls`` (forward, backward)
    times between equal slices; everything else is the layer's own (name,
    type, blobs, state). ``replayed`` marks it, for the trace."""
    replayed = True

    def __init__(self, layer, seconds, calls, patterns):
        self.layer, self.seconds, self.calls, self.patterns = layer, seconds, calls, patterns
        self.progress = layer.progress

    def __getattr__(self, name):
        return getattr(self.layer, name)

    def __repr__(self):
        return f'<replayed {self.layer!r}>'

    def _spend(self, phase, start):
        seconds, calls = self.seconds[phase], self.calls[phase]
        for k in range(1, calls + 1):
            _wait_until(start + seconds * k / (calls + 1))
            if self.progress is not None:
                self.progress()
        _wait_until(start + seconds)

    def reshape(self, bottom, top):
        """The shapes stay those of the real set-up."""

    def forward(self, bottom, top):
        self._spend(0, time.perf_counter())

    def backward(self, top, propagate_down, bottom):
        start = time.perf_counter()
        for blob, wanted, pattern in zip(self.layer.blobs, self.layer.param_propagate_down,
                                         self.patterns):
            if wanted:
                blob.diff += pattern
        self._spend(1, start)   # the pattern's pass is part of the layer's time


def replay(net, profile, speedup=1.0):
    """Replace every layer of ``net`` by its ``Replayed`` stand-in, timed by
    ``profile`` (``load_profile``) divided by ``speedup``. The loss tops read 0."""
    if not speedup > 0:
        raise ReplayError(f'the compute speed-up must be > 0, not {speedup}')
    where = profile.get('path', 'the profile')
    if profile['batch'] != net.batch_size:
        raise ReplayError(f"{where}: profiled at batch {profile['batch']}, the net runs batch "
                          f'{net.batch_size}: profile it at this batch (layerasync time --batch '
                          f'{net.batch_size} --json FILE)')
    rows = profile['layers']
    names = [layer.name for layer in net.layers]
    if [row['name'] for row in rows] != names:
        missing = next((n for n in names if n not in {row['name'] for row in rows}), None)
        detail = (f"it lacks layer '{missing}'" if missing else
                  f"its layers are {', '.join(row['name'] for row in rows[:6])}...")
        raise ReplayError(f"{where}: not a profile of net '{net.name}' as built here ({detail}); "
                          'profile the same net, phase TRAIN, with the same --remove-layers')
    patterns_bytes = sum(b.diff.nbytes for layer in net.layers for b in layer.blobs)
    net.memory.reserve('compute replay', 'the gradient patterns', patterns_bytes)
    for i, (layer, row) in enumerate(zip(net.layers, rows)):
        seconds = (row['forward_ms'] / 1e3 / speedup, row['backward_ms'] / 1e3 / speedup)
        calls = (int(row.get('forward_calls', 0)), int(row.get('backward_calls', 0)))
        stand_in = Replayed(layer, seconds, calls,
                            [_pattern(b, i, k) for k, b in enumerate(layer.blobs)])
        net.layers[i] = stand_in
    for _, blob, _ in net._loss_tops:
        blob.data[...] = 0
    return net
