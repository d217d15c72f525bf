"""Character-level text: windows of T characters with next-character labels.

``text:T`` reads the text that ships with every Python installation, the
English reference documentation of the standard library's
``pydoc_data.topics`` (about 465,000 characters, about 100 distinct; the
exact text is that of the running Python version); ``text:T:FILE`` reads any
UTF-8 file instead (relative to ``DataOptions.root``).

- **Vocabulary**: every distinct character of the file, sorted by code point;
  id k is the k-th. It is a function of the file alone, so every rank and
  every later run build the same one; the Data layer keeps it in its snapshot
  state and refuses to resume on a file with another one.
- **Split**: the first 90% of the characters are TRAIN, the last 10% TEST,
  always (``SPLIT``).
- **Samples**: TRAIN sample i is the window of T ids starting at character i
  (every offset: ``len(train) - T`` samples, shuffled per epoch from the seed
  like the image sets); its labels are the T ids one character later. TEST
  samples are the consecutive, non-overlapping windows of the TEST part, so a
  test pass scores each character once.

The data blob is ``(B, T)`` ids and the label blob ``(B, T)``, both in the
net's float dtype (exact up to 2**24, as Caffe's labels). Sharding is the
image sets' (``sampler``): P ranks at batch B read what one rank reads at P*B.
"""
import os

import numpy as np

from .options import DataError
from .sampler import keyed_bits
from .sources import Source

__all__ = ['Vocabulary', 'TextSource', 'SyntheticTokens', 'embedded_text', 'open_text', 'SPLIT',
           'TEXT_FORMS']

SPLIT = 0.9            # the fraction of the characters that is TRAIN
TEXT_FORMS = 'text:T (the embedded English text), text:T:FILE (a UTF-8 file)'
_MAX_CONTEXT = 1 << 20
_MAX_VOCABULARY = 1 << 24   # ids exact in a float32 blob
_TOKEN_STREAM = 0x544B


def embedded_text():
    """The standard library's pydoc topics, in sorted topic order, as one string."""
    from pydoc_data.topics import topics
    return '\n\n'.join(topics[name] for name in sorted(topics))


class Vocabulary:
    """Characters <-> ids: id k is ``chars[k]``."""

    def __init__(self, chars):
        self.chars = ''.join(chars)
        self._ids = {c: k for k, c in enumerate(self.chars)}
        if len(self._ids) != len(self.chars):
            raise DataError('a vocabulary holds each character once')

    @classmethod
    def of(cls, text):
        return cls(sorted(set(text)))

    @classmethod
    def from_array(cls, codes):
        """The vocabulary saved by ``as_array``."""
        return cls(''.join(map(chr, np.asarray(codes, np.int64).tolist())))

    def as_array(self):
        """The code points, int32: what a snapshot stores."""
        return np.array([ord(c) for c in self.chars], np.int32)

    def __len__(self):
        return len(self.chars)

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def encode(self, text):
        """Ids (int32) of ``text``; a character outside the vocabulary is a DataError."""
        try:
            return np.fromiter((self._ids[c] for c in text), np.int32, len(text))
        except KeyError:
            at = next(k for k, c in enumerate(text) if c not in self._ids)
            raise DataError(f'character {text[at]!r} at position {at} is not in the vocabulary '
                            f'of {len(self)} characters') from None

    def decode(self, ids):
        return ''.join(self.chars[int(k)] for k in np.asarray(ids).reshape(-1))


def _stride(context, phase):
    """Characters between two samples' windows: every offset in TRAIN,
    consecutive windows in TEST."""
    return 1 if phase == 'TRAIN' else context


def window_count(length, context, phase):
    """How many samples a split of ``length`` characters gives (each window has
    its labels one character on)."""
    return (length - 1 - context) // _stride(context, phase) + 1


class TextSource(Source):
    """Windows of ``context`` ids of one split of a text (see the module docstring)."""
    dtype = np.int32

    def __init__(self, name, ids, context, vocabulary, phase):
        self.ids, self.context, self.vocabulary = ids, context, vocabulary
        self.stride = _stride(context, phase)
        super().__init__(name, (context,), len(vocabulary), (), max_value=len(vocabulary) - 1)
        self.label_shape = (context,)
        self._count = window_count(len(ids), context, phase)
        self._offsets = np.arange(context, dtype=np.int64)

    @property
    def count(self):
        return self._count

    def _windows(self, indices, shift):
        starts = np.asarray(indices, np.int64) * self.stride + shift
        return self.ids[starts[:, None] + self._offsets]

    def read(self, indices, out):
        out[...] = self._windows(indices, 0)

    def read_labels(self, indices):
        return self._windows(indices, 1)


class SyntheticTokens(Source):
    """Random ids in ``[0, classes)``, windows of ``context`` with next-id labels,
    a pure function of (seed, phase, index), for timing nets without text."""
    dtype = np.int32

    def __init__(self, context, classes, count, seed=0, phase='TRAIN', name=None):
        super().__init__(name or f'synthetic:{context}:{classes}', (context,), classes, (),
                         max_value=classes - 1)
        self.label_shape = (context,)
        self.seed, self._count = seed, count
        self._stream = _TOKEN_STREAM + (phase != 'TRAIN')
        self._offsets = np.arange(context + 1, dtype=np.int64)

    @property
    def count(self):
        return self._count

    def _tokens(self, indices):
        counters = np.asarray(indices, np.int64)[:, None] * (self.shape[0] + 1) + self._offsets
        bits = keyed_bits(self.seed, self._stream, counters)
        return (bits % np.uint64(self.classes)).astype(np.int64)

    def read(self, indices, out):
        out[...] = self._tokens(indices)[:, :-1]

    def read_labels(self, indices):
        return self._tokens(indices)[:, 1:]


def _read_text(path):
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f'{path}: cannot read the text: {e.strerror or e}') from None
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        raise DataError(f'{path}:{line}: not UTF-8 text (byte {e.start}: {e.reason}); '
                        'the text source reads UTF-8 files') from None


def parse_text_source(text):
    """``(context, file or None)`` from ``text:T[:FILE]``."""
    _, _, rest = text.partition(':')
    size, _, path = rest.partition(':')
    try:
        context = int(size)
    except ValueError:
        context = 0
    if not 0 < context <= _MAX_CONTEXT:
        raise DataError(f"source '{text}': write {TEXT_FORMS}, with T the context length in "
                        f'characters, an integer in [1, {_MAX_CONTEXT:,}]; e.g. text:128')
    return context, path or None


def open_text(text, phase, options):
    """The ``TextSource`` (or with ``options.synthetic``, its ``SyntheticTokens``
    stand-in of the same context, vocabulary size and count) of ``text:T[:FILE]``."""
    context, path = parse_text_source(text)
    if path is None:
        name, full = 'the embedded text', None
        corpus = embedded_text()
    else:
        root = os.path.expanduser(options.root) if options.root else os.getcwd()
        full = os.path.abspath(os.path.join(root, os.path.expanduser(path)))
        name = full
        corpus = _read_text(full)
    vocabulary = Vocabulary.of(corpus)
    if len(vocabulary) > _MAX_VOCABULARY:
        raise DataError(f'{name}: {len(vocabulary):,} distinct characters, more than the '
                        f'{_MAX_VOCABULARY:,} ids a float32 blob holds exactly')
    cut = int(len(corpus) * SPLIT)
    part = corpus[:cut] if phase == 'TRAIN' else corpus[cut:]
    if len(part) < context + 1:
        raise DataError(f"{name}: its {phase} part ({'first' if phase == 'TRAIN' else 'last'} "
                        f'{SPLIT if phase == "TRAIN" else 1 - SPLIT:.0%} of {len(corpus):,} '
                        f'characters) has {len(part):,}, fewer than the {context + 1} one window '
                        f"of source '{text}' needs (T + 1)")
    if options.synthetic:   # the text's shape and size, without encoding it
        count = window_count(len(part), context, phase)
        stand_in = SyntheticTokens(context, len(vocabulary), count, options.seed, phase,
                                   name=f'synthetic stand-in for {text}')
        stand_in.vocabulary = vocabulary
        return stand_in
    return TextSource(text, vocabulary.encode(part), context, vocabulary, phase)
