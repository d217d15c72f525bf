"""Performance model: a measured per-layer profile extrapolated to P ranks.

    profile = load_profile('alexnet.json')            # from `layerasync time --json`
    rows = simulate(profile, fabric('ib-edr'), ranks=[2, 4, 8],
                    strategies=['sync', 'async-layerwise', 'delayed:1'])

Weak scaling: every rank keeps the profile's batch, so P ranks process P
batches per iteration. For each P and strategy the model plays a steady-state
iteration (``schedule``) with the same buckets and chunks as the real
communicator (``layerasync.comm.buckets.make_buckets`` over the arena's
layout, ``layerasync.blob.backward_layout``, of the profile's parameter bytes)
and per-chunk allreduce costs from the network model (``model``). The
communicator settings default to the trainer's (``layerasync.comm.DEFAULTS``),
the strategies to ``layerasync.strategies.DEFAULT_STRATEGIES``. What the model
cannot know is said in ``docs/simulator.md``.
"""
import json
import math
from dataclasses import asdict, dataclass

from ..blob import backward_layout
from ..comm import (DEFAULTS, SCHEDULERS, choose_priority, in_flight_for, parse_codec,
                    scheduler_name)
from ..comm.buckets import make_buckets
from ..strategies import DEFAULT_STRATEGIES
from .model import ALGORITHMS, FABRICS, Network, fabric
from .schedule import Plan, modelled_strategy, steady_iteration

__all__ = ['load_profile', 'make_plan', 'simulate', 'Result', 'Network', 'fabric', 'FABRICS',
           'ALGORITHMS', 'DEFAULT_STRATEGIES', 'DEFAULT_SCHEDULER', 'WIRE_RATIO',
           'collective_parts']

DEFAULT_SCHEDULER = scheduler_name(DEFAULTS['priority'])   # the trainer's
ITEMSIZE = 4   # the arenas are float32
# Bytes on the wire per float32 byte of the dense codecs (layerasync.comm.compress);
# topk and powersgd: ``collective_parts``.
WIRE_RATIO = {None: 1.0, 'fp16': 0.5, 'bf16': 0.5}
# The priority scheduler's round vector: two int64 counters per chunk.
ROUND_BYTES_PER_CHUNK = 16


def load_profile(path):
    """A profile written by ``layerasync time --json``; ValueError if it is not one."""
    with open(path) as f:
        profile = json.load(f)
    layers = profile.get('layers') if isinstance(profile, dict) else None
    if not layers or any(k not in layers[0] for k in ('forward_ms', 'backward_ms', 'param_bytes')):
        raise ValueError(f'{path}: not a layer profile (expected "layers" with forward_ms, '
                         'backward_ms and param_bytes); write one with '
                         '`layerasync time --model M --json FILE`')
    return profile


@dataclass
class Result:
    """One strategy at one P; times in ms per iteration."""
    ranks: int
    strategy: str
    iteration_ms: float   # steady-state time of one iteration
    compute_ms: float     # forward + backward + updates: one rank's iteration
    comm_ms: float        # communication alone: every chunk of an iteration, ready at once
    exposed_ms: float     # iteration - compute: communication (and its waits) not hidden
    overlap: float        # hidden / total communication, in [0, 1]; nan without communication
    speedup: float        # samples/s over one rank's: P * compute / iteration
    efficiency: float     # speedup / P

    def as_dict(self):
        return asdict(self)


def collective_parts(compress, chunk, bucket, layers, network, ranks):
    """(latency, busy) of the collective(s) that reduce ``chunk`` (of ``bucket``)
    under ``--compress`` (``layerasync.comm.compress``), on the wire only:

    - none, ``fp16``, ``bf16``: an allreduce of 4 or 2 bytes per value;
    - ``topk:R``: an all-gather of every rank's k = ceil(R n) (index, value)
      pairs, 8 bytes each;
    - ``powersgd:r``: (a chunk is a whole bucket) an allreduce of the P
      factors (rows x r per matrix, vectors and small matrices dense), then
      one of the Q factors (cols x r): their latencies and busy times add.
      Needs each layer's ``blobs`` (shapes) in the profile.
    """
    n = chunk.stop - chunk.start
    name, argument = parse_codec(compress) if compress else (None, None)
    if name in WIRE_RATIO:
        return network.allreduce_parts(n * ITEMSIZE * WIRE_RATIO[name], ranks)
    if name == 'topk':
        k = min(n, max(1, math.ceil(argument * n)))
        return network.allgather_parts(ranks * 8 * k, ranks)
    first = second = 0
    for layer in bucket.layers:
        if 'blobs' not in layers[layer]:
            raise ValueError(f"--compress {compress}: the profile's layer "
                             f"{layers[layer].get('name', layer)} has no blob shapes "
                             "('blobs'); write the profile again with "
                             '`layerasync time --model M --json FILE`')
        for shape in layers[layer]['blobs']:
            rows = shape[0] if shape else 1
            cols = math.prod(shape[1:]) if len(shape) > 1 else 1
            if rows > argument and cols > argument:
                first, second = first + rows * argument, second + cols * argument
            else:
                first += rows * cols
    (a, b), (c, d) = (network.allreduce_parts(ITEMSIZE * v, ranks) for v in (first, second))
    return a + c, b + d


def make_plan(profile, network, ranks, fusion_bytes=DEFAULTS['fusion_bytes'],
              chunk_bytes=DEFAULTS['chunk_bytes'], in_flight=DEFAULTS['max_in_flight'],
              scheduler=DEFAULT_SCHEDULER, update_rate=2.5e9, compute_speedup=1.0,
              hook_overhead=0.0, compress=None, codec_rate=math.inf, servers=1,
              server_ingress=True, straggler=1.0):
    """The ``schedule.Plan`` of one rank of ``ranks``.

    ``update_rate``: parameter bytes per second of the solver update.
    ``compute_speedup``: a what-if for a rank that computes S times faster than
    the profiled process (more cores, a faster CPU): forward, backward and
    update times are divided by S; communication is not.
    ``hook_overhead``: seconds of compute per layer hook that posts or
    progresses communication (the compute thread's share of communication,
    see ``schedule``); measured, not derived — 0 assumes it away.
    ``compress``: a ``--compress`` codec, whose collectives ``collective_parts``
    costs (``sharded``, which does not compress, sends float32 whatever it
    says); ``codec_rate``: float32 gradient bytes per second the codec packs
    and unpacks (``calibrate.measure_codec_rate``), compute that delays each
    chunk's post and completion and is charged to the link in the chunk's
    turn (default: free). ``servers``: the parameter
    servers of ``ps-sync``/``ps-async`` (``ranks`` are then the workers);
    ``straggler``: one rank's forward and backward take F times the others'
    (``--straggler RANK:F`` of a replayed run). Every collective, and every
    ``ps-sync`` answer, waits for that rank, which therefore stands for all:
    the plan is its own. (``ps-async`` with a straggler is not modelled: its
    fast workers' answers interleave with the straggler's on the servers.)
    ``server_ingress``: whether a server's port limits what it receives (a
    real switch: yes; the emulated cluster shapes egress only). fusion/chunk/in-flight/scheduler
    mean what ``layerasync train``'s flags do, and default to its defaults.
    """
    if compute_speedup <= 0:
        raise ValueError(f'compute_speedup must be positive, not {compute_speedup}')
    if servers < 1:
        raise ValueError(f'servers must be at least 1, not {servers}')
    if not straggler > 0:
        raise ValueError(f'the straggler factor must be positive, not {straggler}')
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler '{scheduler}' is not one of {', '.join(SCHEDULERS)}")
    layers = profile['layers']
    for layer in layers:
        if layer['param_bytes'] % ITEMSIZE:
            raise ValueError(f"layer {layer.get('name', '?')}: {layer['param_bytes']} parameter "
                             'bytes is not a whole number of float32 values')
    segments = backward_layout({i: layer['param_bytes'] // ITEMSIZE
                                for i, layer in enumerate(layers)})
    codec = parse_codec(compress)[0] if compress else None   # ValueError names a bad one
    if not codec_rate > 0:
        raise ValueError(f'codec_rate must be positive, not {codec_rate}')
    if codec == 'powersgd':
        chunk_bytes = 0   # as the communicator: PowerSGD compresses whole matrices
    buckets, chunks = make_buckets(segments, fusion_bytes, chunk_bytes, ITEMSIZE)
    sizes = [(c.stop - c.start) * ITEMSIZE for c in chunks]
    parts = [collective_parts(compress, c, buckets[c.bucket], layers, network, ranks)
             for c in chunks]
    coding = [n / codec_rate if codec and ranks > 1 else 0.0 for n in sizes]
    # 'auto' decides as the communicator does, on the modelled allreduce of all
    # the gradients where the trainer measures one (what the codecs send).
    comm_s = (network.allreduce_time(sum(sizes) * WIRE_RATIO[codec], ranks)
              if codec in WIRE_RATIO else sum(map(sum, parts)))
    priority = choose_priority(SCHEDULERS[scheduler], comm_s if ranks > 1 else 0.0)
    # Rounds are tiny messages: any MPI library reduces them with its
    # latency-optimal algorithm, whatever carries the gradients.
    round_s = (network.with_(algorithm='auto').allreduce_time(
        ROUND_BYTES_PER_CHUNK * len(chunks), ranks) if priority else 0.0)
    scale = 1 / compute_speedup
    slow = scale * straggler if ranks > 1 else scale
    return Plan(forward_s=[slow * 1e-3 * layer['forward_ms'] for layer in layers],
                backward_s=[slow * 1e-3 * layer['backward_ms'] for layer in layers],
                update_s=[scale * layer['param_bytes'] / update_rate for layer in layers],
                buckets=buckets, chunks=chunks,
                chunk_busy_s=[busy + code for (_, busy), code in zip(parts, coding)],
                chunk_latency_s=[latency for latency, _ in parts],
                in_flight=in_flight_for(in_flight, priority),
                priority=priority, round_s=round_s, hook_s=hook_overhead if ranks > 1 else 0.0,
                scatter_parts=[network.reduce_scatter_parts(n, ranks) for n in sizes],
                gather_parts=[network.allgather_parts(n, ranks) for n in sizes], ranks=ranks,
                servers=servers, network=network, server_ingress=server_ingress,
                param_bytes=[layer['param_bytes'] for layer in layers],
                update_rate=update_rate * compute_speedup, straggler=straggler)


def simulate(profile, network, ranks, strategies=DEFAULT_STRATEGIES, **settings):
    """A ``Result`` per (P, strategy), P in ``ranks``; ``settings`` go to ``make_plan``."""
    for spec in strategies:
        modelled_strategy(spec)   # fail on a bad name before any work
    results = []
    for p in ranks:
        if p < 1:
            raise ValueError(f'ranks must be at least 1, not {p}')
        plan = make_plan(profile, network, p, **settings)
        compute, comm = plan.compute_s, plan.comm_alone_s()
        for spec in strategies:
            iteration = steady_iteration(plan, spec)
            exposed = max(0.0, iteration - compute)
            overlap = max(0.0, 1.0 - exposed / comm) if comm > 0 else math.nan
            results.append(Result(p, spec, 1e3 * iteration, 1e3 * compute, 1e3 * comm,
                                  1e3 * exposed, overlap, p * compute / iteration,
                                  compute / iteration))
    return results
