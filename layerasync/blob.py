"""Blob (data + diff) and the parameter arenas.

A Blob is Caffe's unit of storage: an N-d array ``data`` and its gradient
``diff`` of the same shape. Activation blobs own their memory and keep their
capacity across reshapes, so a net that runs at a fixed batch size never
allocates in the hot path.

Parameter blobs are views into two flat arrays, the *arenas*: one for the
values, one for the gradients, laid out identically and ordered by backward
readiness (the last layer's parameters first). A layer's parameters, or a run
of consecutive layers, are then one contiguous slice that the communicator can
reduce in place, and the solver's per-layer update is a few vector operations
on that slice.
"""
import numpy as np

__all__ = ['Blob', 'Arena', 'backward_layout']


class Blob:
    """An array ``data`` and its gradient ``diff``, both of ``shape``."""

    __slots__ = ('name', 'dtype', '_data', '_diff', '_buf_data', '_buf_diff', '_shape')

    def __init__(self, shape=(), dtype=np.float32, name=''):
        self.name = name
        self.dtype = np.dtype(dtype)
        self._buf_data = self._buf_diff = np.zeros(0, self.dtype)
        self._shape = None
        self.reshape(shape)

    def reshape(self, *shape):
        """Give the blob a new shape; memory is reused when it fits."""
        if len(shape) == 1 and not np.isscalar(shape[0]):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if shape == self._shape:
            return
        if any(d < 0 for d in shape):
            raise ValueError(f'blob {self.name!r}: negative dimension in shape {shape}')
        count = int(np.prod(shape, dtype=np.int64))
        if count > self._buf_data.size:
            self._buf_data = np.zeros(count, self.dtype)
            self._buf_diff = np.zeros(count, self.dtype)
        self._data = self._buf_data[:count].reshape(shape)
        self._diff = self._buf_diff[:count].reshape(shape)
        self._shape = shape

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        # Assignment copies into the blob (pycaffe semantics), keeping views valid.
        self._data[...] = value

    @property
    def diff(self):
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff[...] = value

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._data.size

    @property
    def num_axes(self):
        return len(self._shape)

    def count_range(self, start, end=None):
        return int(np.prod(self._shape[start:end], dtype=np.int64))

    def share(self, other, shape=None, diff=True):
        """View ``other``'s data (and diff) under ``shape``, as Caffe's ShareData/ShareDiff.

        Layers that only relabel memory (Split, Flatten, Reshape) call this in
        every ``reshape``, so the view follows ``other`` if it reallocates.
        """
        shape = other.shape if shape is None else tuple(shape)
        if not diff:
            self.reshape(shape)
        self._shape = shape
        self._data = other._data.reshape(shape)
        if diff:
            self._diff = other._diff.reshape(shape)

    def bind(self, data, diff):
        """Make ``data``/``diff`` views of outside memory (the arenas)."""
        assert data.shape == diff.shape == self._shape
        self._buf_data, self._buf_diff = data.reshape(-1), diff.reshape(-1)
        self._data, self._diff = data, diff

    def __repr__(self):
        return f'Blob({self.name!r}, shape={self._shape}, dtype={self.dtype.name})'


def backward_layout(counts):
    """The arenas' layout: ``counts`` maps a layer index to its number of
    parameter values; returns ``[(layer, slice)]`` for the layers with
    parameters in backward order (highest index first), each a contiguous
    slice, packed from offset 0. The communicator's buckets and the simulator's
    plan are cut from this list."""
    segments, offset = [], 0
    for layer in sorted(counts, reverse=True):
        if counts[layer]:
            segments.append((layer, slice(offset, offset + counts[layer])))
            offset += counts[layer]
    return segments


class Arena:
    """Two flat arrays, ``data`` and ``diff``, holding a net's parameter blobs.

    ``segments`` maps each parameter layer (its index) to its contiguous
    slice, in memory order: ``backward_layout``'s.
    """

    def __init__(self, owners, dtype=np.float32):
        """owners: (layer index, [Blob, ...]) pairs, in any order."""
        blobs = dict(owners)
        self.segments = dict(backward_layout({layer: sum(b.count for b in blobs[layer])
                                              for layer in blobs}))
        total = max((view.stop for view in self.segments.values()), default=0)
        self.data = np.zeros(total, dtype)
        self.diff = np.zeros(total, dtype)
        self.views = []   # (Blob, slice)
        for layer, segment in self.segments.items():
            offset = segment.start
            for b in blobs[layer]:
                view = slice(offset, offset + b.count)
                self.data[view] = b.data.reshape(-1)
                b.bind(self.data[view].reshape(b.shape), self.diff[view].reshape(b.shape))
                self.views.append((b, view))
                offset += b.count

    def use_diff(self, diff):
        """Make ``diff`` (same layout) the gradient arena: every parameter's
        ``diff`` becomes a view of it. Lets a strategy keep several gradient
        sets in flight while backward writes the next one."""
        assert diff.shape == self.diff.shape and diff.dtype == self.diff.dtype
        self.diff = diff
        for b, view in self.views:
            b.bind(b.data, diff[view].reshape(b.shape))

    @property
    def count(self):
        return self.data.size

    @property
    def nbytes(self):
        return self.data.nbytes

    def __repr__(self):
        return f'Arena({len(self.segments)} segments, {self.count} values)'
