"""Buckets and chunks: how the gradient arena is cut for communication.

The arena holds the parameter layers in backward-readiness order (the last
layer first), so consecutive layers in that order are adjacent in memory. A
*bucket* fuses such a run of layers until it holds at least ``fusion_bytes``
(0: one bucket per layer); it is ready when its last layer in backward order
(the first in forward order) has its gradient. Its *priority* is that layer's
forward position: the smaller, the sooner the next forward pass needs it.

A bucket larger than ``chunk_bytes`` is cut into *chunks*, the unit the
communicator posts: a few chunks in flight at a time lets a ready chunk of an
early layer overtake the queued chunks of later ones.
"""
from dataclasses import dataclass, field

__all__ = ['Bucket', 'Chunk', 'make_buckets']


@dataclass
class Bucket:
    index: int
    layers: list            # layer indices, in backward order
    start: int              # arena offsets (elements)
    stop: int
    priority: int           # forward position of the first layer needed
    chunks: list = field(default_factory=list)

    @property
    def count(self):
        return self.stop - self.start


@dataclass
class Chunk:
    index: int
    bucket: int
    start: int
    stop: int
    priority: tuple         # (forward position of its earliest layer, position): smaller first


def make_buckets(segments, fusion_bytes=0, chunk_bytes=0, itemsize=4):
    """Buckets over ``segments``: (layer index, arena slice) in arena order.

    ``fusion_bytes``: fuse consecutive layers until a bucket reaches it
    (segments that are not adjacent in the arena are never fused).
    ``chunk_bytes``: cut buckets into chunks of at most this size (0: one chunk).
    Returns (buckets, chunks).
    """
    buckets, current = [], []
    for layer, view in segments:
        if current and view.start != current[-1][1].stop:
            buckets.append(current)   # a gap in the arena: a bucket is one contiguous slice
            current = []
        current.append((layer, view))
        size = (current[-1][1].stop - current[0][1].start) * itemsize
        if size >= fusion_bytes:
            buckets.append(current)
            current = []
    if current:
        buckets.append(current)
    out, chunks = [], []
    per_chunk = max(1, chunk_bytes // itemsize) if chunk_bytes else None
    for b, members in enumerate(buckets):
        start, stop = members[0][1].start, members[-1][1].stop
        bucket = Bucket(b, [layer for layer, _ in members], start, stop,
                        priority=min(layer for layer, _ in members))
        step = per_chunk or max(1, stop - start)
        for k, offset in enumerate(range(start, stop, step)):
            end = min(offset + step, stop)
            # A chunk is needed as early as the earliest layer it holds part of.
            first_needed = min(layer for layer, view in members
                               if view.start < end and view.stop > offset)
            chunk = Chunk(len(chunks), b, offset, end, (first_needed, k))
            chunks.append(chunk)
            bucket.chunks.append(chunk.index)
        out.append(bucket)
    return out, chunks
