"""Image sources: the embedded digits and MNIST subset, MNIST IDX files, CIFAR-10
binary batches, synthetic.

``open_source(text, phase, options)`` turns a ``data_param { source }`` string
into a ``Source``: ``count`` images of ``shape`` (C, H, W) with uint8 pixels
and integer labels in ``[0, classes)``. The real data sets are read whole into
memory (the largest, CIFAR-10's training set, is 150 MB); synthetic images are
drawn on demand, so any shape is cheap.
"""
import gzip
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .options import DataError, DataOptions
from .sampler import keyed_bits

__all__ = ['Source', 'ArraySource', 'SyntheticSource', 'open_source', 'read_idx',
           'load_digits', 'load_mnist_subset', 'load_mnist', 'load_cifar10', 'SOURCE_FORMS']

SOURCE_FORMS = ('digits (the embedded UCI digits), mnist-subset (5,000 embedded MNIST digits), '
                'mnist:DIR, cifar10:DIR, text:T[:FILE] (windows of T characters: the '
                'embedded English text, or a UTF-8 file), synthetic:CxHxW[:CLASSES[:COUNT]], '
                'synthetic:T[:VOCABULARY[:COUNT]]')
DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits.npz')
MNIST_SUBSET_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mnist_subset.npz')

MNIST_URL = 'http://yann.lecun.com/exdb/mnist/'
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'

# Synthetic labels and pixels use independent streams, offset by the phase code.
_LABEL_STREAM, _PIXEL_STREAM = 0x4C42, 0x5058
_PHASE_CODE = {'TRAIN': 0, 'TEST': 1}


class Source:
    """A labelled image set: ``count`` images of ``shape`` (C, H, W), uint8
    pixels in ``[0, max_value]``, int64 ``labels`` in ``[0, classes)``.

    ``dtype`` is what ``read`` writes (uint8 pixels; int32 ids for text) and
    ``label_shape`` the shape of one sample's labels (one class: ``()``)."""
    dtype = np.uint8
    label_shape = ()

    def __init__(self, name, shape, classes, labels, max_value=255):
        self.name, self.shape, self.classes = name, tuple(shape), classes
        self.labels, self.max_value = np.asarray(labels, np.int64), max_value

    @property
    def count(self):
        return len(self.labels)

    def read(self, indices, out):
        """Write the images at ``indices`` into ``out`` (uint8, (len(indices), C, H, W))."""
        raise NotImplementedError

    def read_labels(self, indices):
        """The labels (int64) of the images at ``indices``."""
        return self.labels[indices]

    def __repr__(self):
        return (f'<{type(self).__name__} {self.name}: {self.count} x {self.shape}, '
                f'{self.classes} classes>')


class ArraySource(Source):
    """Images held in memory as a uint8 array (N, C, H, W)."""

    def __init__(self, name, images, labels, classes, max_value=255):
        super().__init__(name, images.shape[1:], classes, labels, max_value)
        self.images = images

    def read(self, indices, out):
        np.take(self.images, indices, axis=0, out=out)


class SyntheticSource(Source):
    """Uniformly random pixels and labels, a pure function of (seed, phase, index).

    TRAIN and TEST draw different samples, as real data sets have different
    files; each image and label is generated when read, so no memory is spent
    on them, whatever ``count``.
    """

    def __init__(self, shape, classes, count, seed=0, phase='TRAIN', max_value=255, name=None):
        self.seed, self._stream = seed, _PIXEL_STREAM + _PHASE_CODE[phase]
        self._label_stream = _LABEL_STREAM + _PHASE_CODE[phase]
        name = name or 'synthetic:' + 'x'.join(map(str, shape))
        super().__init__(name, shape, classes, (), max_value)
        self._count = count

    @property
    def count(self):
        return self._count

    def read_labels(self, indices):
        # The modulo's bias is below classes / 2**64: nil for any class count allowed.
        bits = keyed_bits(self.seed, self._label_stream, indices)
        return (bits % np.uint64(self.classes)).astype(np.int64)

    def read(self, indices, out):
        # Eight pixels per 64 random bits, with counters per (image, word): vectorised,
        # and an image's pixels do not depend on which batch reads it.
        size = int(np.prod(self.shape))
        words = -(-size // 8)
        counters = np.asarray(indices, np.int64)[:, None] * words + np.arange(words)
        bits = keyed_bits(self.seed, self._stream, counters).astype('<u8', copy=False)
        pixels = bits.view(np.uint8)[:, :size].reshape(out.shape)
        if self.max_value == 255:
            out[...] = pixels
        else:
            np.remainder(pixels, self.max_value + 1, out=out)


# ------------------------------------------------------------------ files

def _locate(directory, name):
    """``directory/name``, or its gzipped ``.gz`` twin; None if neither exists."""
    path = os.path.join(directory, name)
    for candidate in (path, path + '.gz'):
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_bytes(path):
    """The contents of ``path``, decompressed if it ends in ``.gz``."""
    try:
        if path.endswith('.gz'):
            with gzip.open(path, 'rb') as f:
                return f.read()
        with open(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError.
        raise DataError(f'{path}: cannot read: {e}') from None


def _missing(directory, name, dataset, expected, url):
    where = directory if os.path.isdir(directory) else f'{directory} (which does not exist)'
    return DataError(
        f'{os.path.join(directory, name)}: no such file (nor {name}.gz). The {dataset} source '
        f'expects in {where}: {expected}, raw or gzipped. {dataset} comes from {url}; '
        'or set DataOptions(synthetic=True) to time a net without the files.')


def read_idx(path, ndim):
    """The uint8 array in the IDX file ``path`` (raw or gzipped), which must
    have ``ndim`` dimensions; a corrupt file is a ``DataError`` naming it."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f'{path}: {len(raw)} bytes, too short for an IDX header: truncated file')
    magic = int.from_bytes(raw[:4], 'big')
    if raw[:3] != b'\x00\x00\x08':
        raise DataError(f'{path}: bad magic number 0x{magic:08x} (expected 0x{0x800 + ndim:08x}): '
                        'not an IDX file of unsigned bytes')
    if raw[3] != ndim:
        raise DataError(f'{path}: IDX file with {raw[3]} dimensions, expected {ndim} '
                        f"({'images: count, rows, columns' if ndim == 3 else 'labels: count'})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f'{path}: {len(raw)} bytes, too short for the {ndim} dimensions '
                        'of its header: truncated file')
    dims = struct.unpack(f'>{ndim}I', raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f'{path}: {len(raw)} bytes, but its header (dimensions '
                        f"{' x '.join(map(str, dims))}) implies {expected}: "
                        'truncated or corrupt file')
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _check_labels(path, labels):
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f'{path}: record {bad[0]} has label {labels[bad[0]]}; '
                        'labels must be 0..9: corrupt file')


def load_mnist(directory, phase):
    """MNIST from the IDX files in ``directory``: train-* for TRAIN, t10k-* for TEST."""
    expected = ('train-images-idx3-ubyte, train-labels-idx1-ubyte (TRAIN), '
                't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (TEST)')
    prefix = 'train' if phase == 'TRAIN' else 't10k'
    paths = []
    for name in (f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte'):
        path = _locate(directory, name)
        if path is None:
            raise _missing(directory, name, 'MNIST', expected, MNIST_URL)
        paths.append(path)
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if len(images) != len(labels) or not len(images):
        raise DataError(f'{paths[0]} holds {len(images)} images and {paths[1]} holds '
                        f'{len(labels)} labels: expected the same, non-zero number')
    _check_labels(paths[1], labels)
    return ArraySource('mnist', images[:, None], labels, classes=10)


CIFAR10_RECORD = 1 + 3 * 32 * 32


def load_cifar10(directory, phase):
    """CIFAR-10 from the binary batches in ``directory`` (or its ``cifar-10-batches-bin``)."""
    names = ([f'data_batch_{i}.bin' for i in range(1, 6)] if phase == 'TRAIN'
             else ['test_batch.bin'])
    nested = os.path.join(directory, 'cifar-10-batches-bin')
    if _locate(directory, names[0]) is None and os.path.isdir(nested):
        directory = nested  # DIR is where the archive was unpacked
    images, labels = [], []
    for name in names:
        path = _locate(directory, name)
        if path is None:
            raise _missing(directory, name, 'CIFAR-10',
                           'data_batch_1.bin .. data_batch_5.bin (TRAIN), test_batch.bin (TEST)',
                           f"{CIFAR10_URL} ('CIFAR-10 binary version', cifar-10-binary.tar.gz)")
        raw = _read_bytes(path)
        if len(raw) % CIFAR10_RECORD or not raw:
            raise DataError(f'{path}: {len(raw)} bytes is not a positive whole number of '
                            f'{CIFAR10_RECORD}-byte records (1 label byte + 3x32x32 pixels): '
                            'truncated, or not a CIFAR-10 binary batch')
        records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD)
        _check_labels(path, records[:, 0])
        labels.append(records[:, 0])
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return ArraySource('cifar10', np.concatenate(images), np.concatenate(labels), classes=10)


def load_digits(phase):
    """The embedded UCI digits (see ``layerasync.data``): 1,437 TRAIN / 360 TEST, 1x8x8, 0..16."""
    part = 'train' if phase == 'TRAIN' else 'test'
    with np.load(DIGITS_PATH) as f:
        images, labels = f[f'{part}_images'], f[f'{part}_labels']
    return ArraySource('digits', images, labels, classes=10, max_value=16)


def load_mnist_subset(phase):
    """The embedded MNIST subset (see ``layerasync.data``): 4,000 TRAIN / 1,000 TEST, 1x28x28."""
    part = 'train' if phase == 'TRAIN' else 'test'
    with np.load(MNIST_SUBSET_PATH) as f:
        images, labels = f[f'{part}_images'], f[f'{part}_labels']
    return ArraySource('mnist-subset', images, labels, classes=10)


# ------------------------------------------------------------------ source strings

@dataclass(frozen=True)
class _RealSet:
    """What a real data set looks like, known without reading it (for synthetic stand-ins)."""
    load: object          # load(directory, phase) or, for embedded sets, load(phase)
    shape: tuple
    classes: int
    counts: dict          # phase -> number of samples
    max_value: int = 255
    embedded: bool = False


REAL_SETS = {
    'digits': _RealSet(load_digits, (1, 8, 8), 10, {'TRAIN': 1437, 'TEST': 360}, 16, True),
    'mnist-subset': _RealSet(load_mnist_subset, (1, 28, 28), 10, {'TRAIN': 4000, 'TEST': 1000},
                             embedded=True),
    'mnist': _RealSet(load_mnist, (1, 28, 28), 10, {'TRAIN': 60000, 'TEST': 10000}),
    'cifar10': _RealSet(load_cifar10, (3, 32, 32), 10, {'TRAIN': 50000, 'TEST': 10000}),
}


# Caffe's sizes are 32-bit ints; a label must be exact in a float32 blob.
_MAX_COUNT, _MAX_CLASSES = 2 ** 31 - 1, 2 ** 24


def _synthetic(text, arg, phase, seed):
    parts = arg.split(':')
    try:
        shape = tuple(int(d) for d in parts[0].split('x'))
        classes = int(parts[1]) if len(parts) > 1 else 10
        count = int(parts[2]) if len(parts) > 2 else 1024
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or len(parts) > 3 or min(shape + (classes, count)) <= 0:
        raise DataError(f"source '{text}': write synthetic:CxHxW[:CLASSES[:COUNT]] (images) or "
                        'synthetic:T[:VOCABULARY[:COUNT]] (windows of T ids) with positive '
                        'integers, e.g. synthetic:3x32x32:10:1024 (default 10 classes, '
                        '1024 samples)')
    for what, value, most in (('a dimension', max(shape), _MAX_COUNT),
                              ('CLASSES', classes, _MAX_CLASSES), ('COUNT', count, _MAX_COUNT)):
        if value > most:
            raise DataError(f"source '{text}': {what} is {value:,}, more than the {most:,} "
                            'allowed (sizes are 32-bit, labels exact in float32)')
    if len(shape) == 1:
        from .text import SyntheticTokens
        return SyntheticTokens(shape[0], classes, count, seed, phase, name=text)
    return SyntheticSource(shape, classes, count, seed, phase, name=text)


def open_source(text, phase='TRAIN', options=None):
    """The ``Source`` named by a ``data_param { source }`` string, for ``phase``.

    Forms: ``digits``; ``mnist-subset``; ``mnist:DIR``; ``cifar10:DIR`` (DIR relative to
    ``options.root``); ``synthetic:CxHxW[:CLASSES[:COUNT]]`` (default 10
    classes, 1024 samples). With ``options.synthetic`` a real set is replaced
    by synthetic samples of its shape, class count and size.
    """
    options = options or DataOptions()
    if not text:
        raise DataError(f'no data source given: set data_param {{ source: "..." }} to one of: '
                        f'{SOURCE_FORMS}')
    scheme, colon, arg = text.partition(':')
    if scheme == 'synthetic':
        return _synthetic(text, arg, phase, options.seed)
    if scheme == 'text':
        from .text import open_text
        return open_text(text, phase, options)
    real = REAL_SETS.get(scheme)
    if real is None:
        raise DataError(f"unknown data source '{text}'; known sources: {SOURCE_FORMS}")
    if real.embedded and colon:
        raise DataError(f"source '{text}': {scheme} is embedded in the package and takes no "
                        f"directory; write source: \"{scheme}\"")
    if not real.embedded and not arg:
        raise DataError(f"source '{text}': name the directory of the files, "
                        f'e.g. {scheme}:data/{scheme}')
    if options.synthetic:
        return SyntheticSource(real.shape, real.classes, real.counts[phase], options.seed, phase,
                               real.max_value, name=f'synthetic stand-in for {text}')
    if real.embedded:
        return real.load(phase)
    root = os.path.expanduser(options.root) if options.root else os.getcwd()
    return real.load(os.path.abspath(os.path.join(root, os.path.expanduser(arg))), phase)
