"""The pieces of a parameter-server job: which server holds which part of the arena.

Every rank, worker or server, computes the same ``Layout`` from its solver;
nothing about it travels on the wire except a piece's index, its tag.
"""
from dataclasses import dataclass

import numpy as np

from ..solver import ParamSlot

__all__ = ['Piece', 'Layout', 'shard']


@dataclass(frozen=True, eq=False)
class Piece:
    """A contiguous range of one parameter blob, held by one server (compared
    and hashed by identity: each layout makes each piece once)."""
    index: int        # in ``Layout.pieces``; also its message tag
    server: int
    start: int        # arena offsets (elements)
    stop: int
    slot: ParamSlot   # the blob: its layer, name ('ip1/0') and lr_mult / decay_mult

    @property
    def view(self):
        return slice(self.start, self.stop)


def shard(slots, servers, snap=0.1, align=16):
    """Cut the blobs of ``slots`` (``ParamSlot``s in arena order) into pieces over ``servers``.

    Each server gets a contiguous run of the concatenated blobs, balanced by
    size. A cut moves to the nearest blob boundary when that is within
    ``snap`` of a server's share (fewer, larger messages); otherwise it cuts
    the blob, at a multiple of ``align`` elements. Pieces come in server
    order, then arena order.
    """
    offsets = np.cumsum([0] + [s.view.stop - s.view.start for s in slots])
    total = int(offsets[-1])
    share = total / servers
    cuts = [0]
    for s in range(1, servers):
        ideal = s * share
        near = int(offsets[np.argmin(np.abs(offsets - ideal))])
        cut = near if abs(near - ideal) <= snap * share else int(round(ideal / align)) * align
        cuts.append(min(max(cut, cuts[-1]), total))
    cuts.append(total)
    pieces = []
    for s in range(servers):
        for b, slot in enumerate(slots):
            lo, hi = max(cuts[s], offsets[b]), min(cuts[s + 1], offsets[b + 1])
            if lo < hi:
                start = slot.view.start - int(offsets[b])
                pieces.append(Piece(len(pieces), s, int(start + lo), int(start + hi), slot))
    return pieces


class Layout:
    """The served parameters of ``solver`` cut into pieces over ``servers``.

    ``pieces[p]`` is a ``Piece``; ``by_layer[i]`` lists layer i's pieces
    (layers whose blobs all have lr_mult 0 have none) and ``by_server[s]``
    server s's. Blobs with lr_mult 0 are not served.
    """

    def __init__(self, solver, servers):
        served = sorted((s for s in solver.slots if s.lr_mult != 0), key=lambda s: s.view.start)
        self.pieces = shard(served, servers)
        self.by_layer, self.by_server = {}, {s: [] for s in range(servers)}
        for p in self.pieces:
            self.by_layer.setdefault(p.slot.layer, []).append(p)
            self.by_server[p.server].append(p)
