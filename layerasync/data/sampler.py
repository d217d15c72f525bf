"""Which samples each rank reads for batch t, and counter-based random bits.

The sample order is a single stream shared by all ranks: the concatenation of
one permutation of the data set per epoch (epoch e's drawn from ``(seed, e)``;
the identity when not shuffling). Global batch t is stream positions
``[t*P*B, (t+1)*P*B)`` for P ranks at batch B, and rank r reads the contiguous
slice ``[r*B, (r+1)*B)`` of it. So P ranks at batch B together read exactly what
one rank at batch P*B reads, rank 0's part first, and batch t is a pure
function of (seed, t, rank): resuming needs nothing but t.

Randomness attached to a sample (crop offsets, mirroring) is keyed by its
stream position p with ``keyed_bits``, so it too is independent of how the
global batch is split between ranks.
"""
import numpy as np

__all__ = ['ShardSampler', 'keyed_bits']

_SHUFFLE_STREAM = 0x5348   # keeps the epoch permutations apart from other uses of the seed
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z):
    """SplitMix64's finalizer: a bijection of uint64 that mixes every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_bits(seed, stream, counters):
    """64 random bits (uint64) for each of ``counters``, a pure function of
    ``(seed, stream, counter)``; different streams give independent bits."""
    with np.errstate(over='ignore'):  # uint64 arithmetic wraps by design
        key = _splitmix(np.array([seed], np.uint64) * _GOLDEN + np.uint64(stream))
        return _splitmix(key + np.asarray(counters, np.uint64) * _GOLDEN)


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

    def positions(self, t):
        """Stream positions (int64, shape (B,)) of this rank's part of global batch t."""
        start = (t * self.world_size + self.rank) * self.batch_size
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
