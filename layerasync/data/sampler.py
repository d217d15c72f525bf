"""Which samples each rank reads for batch t, counter-based random bits, and
the stream positions of the batch a net is working on.

The sample order is a single stream shared by all ranks: the concatenation of
one permutation of the data set per epoch (epoch e's drawn from ``(seed, e)``;
the identity when not shuffling). Global batch t is stream positions
``[t*P*B, (t+1)*P*B)`` for P ranks at batch B, and rank r reads the contiguous
slice ``[r*B, (r+1)*B)`` of it. So P ranks at batch B together read exactly what
one rank at batch P*B reads, rank 0's part first, and batch t is a pure
function of (seed, t, rank): resuming needs nothing but t.

Randomness attached to a sample (crop offsets, mirroring, dropout masks) is
keyed by its stream position p with ``keyed_bits``, so it too is independent
of how the global batch is split between ranks. A net's source layers (Data,
Input) publish the positions of the batch they produced on the net's
``BatchContext``; layers that draw per-sample noise read them there.
"""
import hashlib

import numpy as np

__all__ = ['ShardSampler', 'BatchContext', 'first_position', 'keyed_bits', 'stream_key',
           'named_stream']

_SHUFFLE_STREAM = 0x5348   # keeps the epoch permutations apart from other uses of the seed
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z):
    """SplitMix64's finalizer: a bijection of uint64 that mixes every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stream_key(seed, stream):
    """The uint64 key of random stream ``stream`` (an integer in [0, 2**64)) under ``seed``."""
    with np.errstate(over='ignore'):  # uint64 arithmetic wraps by design
        return _splitmix(np.array([seed], np.uint64) * _GOLDEN + np.uint64(stream))[0]


def keyed_bits(seed, stream, counters):
    """64 random bits (uint64) for each of ``counters``, a pure function of
    ``(seed, stream, counter)``: ``splitmix(stream_key(seed, stream) + counter *
    golden)``, SplitMix64's output for state ``counter`` under that key.
    Different streams give independent bits."""
    with np.errstate(over='ignore'):
        return _splitmix(stream_key(seed, stream) + np.asarray(counters, np.uint64) * _GOLDEN)


def named_stream(name):
    """A stream number for ``name`` (a layer's name): the first 8 bytes of its
    BLAKE2b digest, the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), 'little')


def first_position(t, batch_size, rank=0, world_size=1):
    """Stream position of the first sample of rank ``rank``'s part of global batch t."""
    return (t * world_size + rank) * batch_size


class ShardSampler:
    """Rank ``rank`` of ``world_size``'s sample indices for each batch.

    ``count`` samples; ``batch_size`` B per rank; ``shuffle`` draws a fresh
    permutation per epoch from ``(seed, epoch)``, otherwise samples come in
    file order. Batches cross epoch boundaries seamlessly: no sample is
    dropped or repeated within an epoch.
    """

    def __init__(self, count, batch_size, rank=0, world_size=1, seed=0, shuffle=True):
        self.count, self.batch_size = count, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self._epoch_orders = {}

    def first_position(self, t):
        """Stream position of the first sample of this rank's part of global batch t."""
        return first_position(t, self.batch_size, self.rank, self.world_size)

    def positions(self, t):
        """Stream positions (int64, shape (B,)) of this rank's part of global batch t."""
        start = self.first_position(t)
        return np.arange(start, start + self.batch_size, dtype=np.int64)

    def indices(self, t):
        """Sample indices (int64, shape (B,)) that this rank reads for global batch t."""
        positions = self.positions(t)
        if not self.shuffle:
            return positions % self.count
        epochs, offsets = np.divmod(positions, self.count)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            here = epochs == e
            out[here] = self._order(int(e))[offsets[here]]
        return out

    def _order(self, epoch):
        if epoch not in self._epoch_orders:
            rng = np.random.default_rng([self.seed, _SHUFFLE_STREAM, epoch])
            # Consecutive batches need at most the neighbouring epochs' orders.
            self._epoch_orders = {e: p for e, p in self._epoch_orders.items()
                                  if abs(e - epoch) <= 1}
            self._epoch_orders[epoch] = rng.permutation(self.count)
        return self._epoch_orders[epoch]


class BatchContext:
    """Where the samples of a net's current forward pass sit in the sample stream.

    A net has one, seen by each of its layers as ``layer.batch`` (set before
    ``setup``); a layer outside a net gets its own. The contract:

    - ``begin_pass()``: the net starts a forward pass at its first layer; the
      previous pass's positions are forgotten (a pass that starts further down
      keeps them);
    - ``publish(layer, first, count)``: source layer ``layer`` (Data, Input)
      produced ``count`` samples, at stream positions ``first, ..., first +
      count - 1``;
    - ``first_position(layer, count)``: for ``layer``, about to draw noise
      per sample over a bottom whose axis 0 holds ``count`` samples, the
      position of its first sample: that of the range published this pass
      with ``count`` samples. Nothing published (a layer outside a net): 0.
      Only ranges of other sizes, or two different ranges of this size: a
      ``LayerError`` naming the layer and the ranges;
    - ``key(name)``: the uint64 key of the draws of the layer named ``name``,
      ``stream_key(seed, named_stream(name))``.

    Element e of the sample at position p then gets the bits
    ``splitmix(keyed_bits(seed, named_stream(name), p) + e * golden)``
    (SplitMix64's stream seeded by the sample's key): a pure function of
    (seed, layer name, p, e), the same whichever rank holds the sample and
    wherever it sits in that rank's batch.
    """

    def __init__(self, seed=0):
        self.seed = seed
        self._ranges = {}   # source layer name -> (first, count), this pass

    def begin_pass(self):
        self._ranges.clear()

    def publish(self, layer, first, count):
        self._ranges[layer.name] = (int(first), int(count))

    def first_position(self, layer, count):
        firsts = {first for first, n in self._ranges.values() if n == count}
        if len(firsts) == 1:
            return firsts.pop()
        if not self._ranges:
            return 0
        produced = ', '.join(f"'{name}': {n} samples from position {first}"
                             for name, (first, n) in self._ranges.items())
        if firsts:
            raise layer.error(f'its bottom holds {count} samples, and several source layers '
                              f'produced different batches of that size ({produced}): which '
                              'samples it holds is ambiguous')
        raise layer.error(f'its bottom holds {count} samples (axis 0), but the source layers '
                          f'produced other batch sizes ({produced}): per-sample random draws '
                          'need axis 0 to be the batch')

    def key(self, name):
        return stream_key(self.seed, named_stream(name))
