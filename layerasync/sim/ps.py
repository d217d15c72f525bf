"""The parameter servers in the model: ``ps-sync`` and ``ps-async`` (``layerasync.ps``).

W workers and S servers, one process per node. The workers compute alike (no
skew), so one worker stands for all of them, as in ``schedule``. The
parameters are cut into pieces over the servers as the job cuts them
(``layerasync.ps.layout.shard``; here one blob per layer, since a profile
knows layers, not blobs). Every resource serves in arrival order:

- **the worker's link** (egress): after layer l's backward the worker pushes
  l's pieces, ``alpha + n / beta`` each, one after the other;
- **a server's ingress**: piece p's W pushes arrive through the server's port,
  ``W n / beta`` (``ingress=True``, a real switch); with ``ingress=False`` (the
  emulated cluster, where only each host's egress is shaped) they arrive as
  each worker's link delivers them, all together;
- **a server's CPU**: ``ps-sync`` sums the W gradients of the piece and
  updates it once; ``ps-async`` applies each gradient as it arrives (one
  pass per gradient, and the clock's momentum step once). Both cost about
  ``(W + 1) n / update_rate``: identical workers give ``ps-async`` nothing
  to gain here (its staleness allowance removes waits for slower workers,
  and there are none; a straggler is where it differs);
- **a server's link** (egress): the W answers of the piece, ``W n / beta``,
  sent together, so every worker has its answer when the last byte leaves.

The worker's forward of layer l waits for the answers of l's pieces of the
previous clock (``ps.worker``'s ``before_forward``). Nothing else waits:
the iteration ends when the worker's backward does.
"""
from types import SimpleNamespace

__all__ = ['KINDS', 'not_modelled', 'pieces_of', 'ps_iteration_ends']

KINDS = ('ps-sync', 'ps-async')


def not_modelled(kind, straggler=1.0):
    """Why ``kind`` cannot be played with this straggler factor, or None."""
    if kind == 'ps-async' and straggler != 1:
        return ('ps-async with a straggler is not modelled: its fast workers run ahead and '
                "their answers interleave with the straggler's on the servers (model "
                'ps-sync, or no straggler)')
    return None


def pieces_of(param_bytes, servers, itemsize=4):
    """[(layer, server, bytes)] of the served parameters, in the job's order:
    ``layout.shard`` over one blob per layer with parameters, in arena order
    (``blob.backward_layout``: the last layer first)."""
    from ..blob import backward_layout
    from ..ps.layout import shard
    segments = backward_layout({layer: n // itemsize for layer, n in enumerate(param_bytes)})
    slots = [SimpleNamespace(view=view, layer=layer) for layer, view in segments]
    return [(p.slot.layer, p.server, (p.stop - p.start) * itemsize)
            for p in shard(slots, servers)]


def ps_iteration_ends(plan, kind, iterations):
    """Times at which each of ``iterations`` iterations ends under ``kind``
    (``ps-sync`` or ``ps-async``) for ``plan.ranks`` workers and
    ``plan.servers`` servers, from time 0."""
    if kind not in KINDS:
        raise ValueError(f"'{kind}' is not a parameter-server strategy ({', '.join(KINDS)})")
    refused = not_modelled(kind, plan.straggler)
    if refused:
        raise ValueError(refused)
    if plan.network is None or plan.param_bytes is None:
        raise ValueError('this plan has no network or parameter bytes (make_plan gives them)')
    net, workers, servers = plan.network, plan.ranks, plan.servers
    pieces = pieces_of(plan.param_bytes, servers)
    by_layer = {}
    for index, (layer, _, _) in enumerate(pieces):
        by_layer.setdefault(layer, []).append(index)
    update_rate = plan.update_rate
    worker_free = 0.0
    ingress_free, cpu_free, egress_free = ([0.0] * servers for _ in range(3))
    answer = [0.0] * len(pieces)
    t, ends = 0.0, []
    for it in range(iterations):
        for layer, cost in enumerate(plan.forward_s):
            if it > 0 and layer in by_layer:
                t = max([t] + [answer[p] for p in by_layer[layer]])
            t += plan.hook_s + cost
        for layer in reversed(range(len(plan.backward_s))):
            t += plan.backward_s[layer] + plan.hook_s
            for p in by_layer.get(layer, ()):
                _, s, n = pieces[p]
                start = max(t, worker_free)
                worker_free = start + n / net.beta
                arrived = worker_free + net.alpha
                if plan.server_ingress:
                    ingress_free[s] = max(ingress_free[s], start) + workers * n / net.beta
                    arrived = max(arrived, ingress_free[s] + net.alpha)
                cpu_free[s] = max(arrived, cpu_free[s]) + (workers + 1) * n / update_rate
                egress_free[s] = max(cpu_free[s], egress_free[s]) + workers * n / net.beta
                answer[p] = egress_free[s] + net.alpha
        ends.append(t)
    return ends
