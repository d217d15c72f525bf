"""A rank's stream of transformed batches (``Dataset``) and its background ``Prefetcher``."""
import functools
import queue
import threading
import weakref

import numpy as np

from .options import DataError, DataOptions
from .sampler import ShardSampler
from .sources import open_source
from .transform import Transform

__all__ = ['Dataset', 'Prefetcher']


def _fill(source, sampler, transform, t, images, data, label):
    """Write this rank's batch ``t`` into ``data`` and ``label`` (may be None);
    ``images`` is a uint8 staging buffer for the raw pixels."""
    indices = sampler.indices(t)
    source.read(indices, images)
    transform.apply(images, sampler.positions(t), data)
    if label is not None:
        label[...] = source.read_labels(indices)


class Ids:
    """The transformation of id sources (text): none. Ids are copied into the
    net's dtype; any image transformation asked for is refused."""
    per_sample = False

    def __init__(self, param, source):
        self.output_shape = source.shape
        if param is not None:
            asked = [name for name in ('scale', 'mirror', 'crop_size', 'mean_file', 'mean_value',
                                       'force_color', 'force_gray') if param.has(name)]
            if asked:
                raise DataError(f"transform_param {{ {' '.join(asked)} }}: source "
                                f"'{source.name}' gives ids, not images; remove the "
                                'transform_param')

    def apply(self, ids, positions, out):
        out[...] = ids


class Dataset:
    """Batches of this rank's shard of a source, transformed as Caffe does.

    ``Dataset(source, batch_size, phase, transform_param, options, dtype)``:
    ``source`` is a source string (see ``open_source``), ``batch_size`` the
    number of samples *per rank* (the global batch is ``world_size *
    batch_size``), ``transform_param`` a TransformationParameter (None: no
    transformation), ``options`` a ``DataOptions`` (None: defaults). TRAIN
    shuffles every epoch; TEST reads in file order.

    ``next(data, label)`` writes batch ``self.batch`` — a pure function of
    (seed, rank, batch) — into ``data`` (``self.shape``, ``dtype``) and
    ``label`` ((B,), or None), advances, and returns the stream position of
    the batch's first sample (its B samples are consecutive in the stream). With ``options.prefetch`` the
    next batch is prepared in a daemon thread meanwhile; ``close()`` stops it
    (later batches are then prepared in the caller's thread).
    """

    def __init__(self, source, batch_size, phase='TRAIN', transform_param=None, options=None,
                 dtype=np.float32, name='data'):
        options = options or DataOptions()
        if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
            raise DataError(f'batch_size must be a positive number of samples per rank, '
                            f'not {batch_size!r}')
        self.source = open_source(source, phase, options)
        if len(self.source.shape) == 3:
            self.transform = Transform(transform_param, self.source.shape, phase, options.seed,
                                       options.root, dtype)
        else:
            self.transform = Ids(transform_param, self.source)
        self.sampler = ShardSampler(self.source.count, batch_size, options.rank,
                                    options.world_size, options.seed, shuffle=phase == 'TRAIN')
        self.batch_size, self.dtype = batch_size, np.dtype(dtype)
        self.global_batch_size = options.world_size * batch_size
        self.shape = (batch_size,) + self.transform.output_shape
        self.label_shape = (batch_size,) + self.source.label_shape
        self.batch = 0
        # The thread gets the parts, not self: an unclosed Dataset can still be collected.
        self._fill = functools.partial(_fill, self.source, self.sampler, self.transform)
        self._prefetcher = None
        if options.prefetch:
            self._prefetcher = Prefetcher(self._fill, [self._buffers(), self._buffers()],
                                          name=f'layerasync-prefetch-{name}', first=0)
        else:
            self._images = self._staging()

    def _staging(self):
        return np.empty((self.batch_size,) + self.source.shape, self.source.dtype)

    def _buffers(self):
        return (self._staging(), np.empty(self.shape, self.dtype),
                np.empty(self.label_shape, self.dtype))

    def next(self, data, label=None):
        """Write batch ``self.batch`` into ``data`` and ``label``, advance; the
        stream position of its first sample."""
        if self._prefetcher is not None:
            _, ready_data, ready_label = self._prefetcher.get(self.batch)
            data[...] = ready_data
            if label is not None:
                label[...] = ready_label
        else:
            self._fill(self.batch, self._images, data, label)
        self.batch += 1
        return self.sampler.first_position(self.batch - 1)

    def state_dict(self):
        """What resumes the stream exactly: the batch counter (and a consistency
        check); for text, the vocabulary (its code points), which gives ids their meaning."""
        state = {'batch': np.array(self.batch, np.int64),
                 'global_batch_size': np.array(self.global_batch_size, np.int64)}
        vocabulary = getattr(self.source, 'vocabulary', None)
        if vocabulary is not None:
            state['vocabulary'] = vocabulary.as_array()
        return state

    def load_state_dict(self, state):
        """Continue from ``state`` (from ``state_dict``): the next batch is its batch counter."""
        missing = {'batch', 'global_batch_size'} - set(state)
        if missing:
            raise DataError(f"data state lacks {', '.join(sorted(missing))}; "
                            'expected the dict that state_dict() returned')
        batch, size = np.asarray(state['batch']), np.asarray(state['global_batch_size'])
        if batch.shape or batch.dtype.kind not in 'iu' or batch < 0:
            raise DataError(f'data state: batch must be a non-negative integer, not {batch!r}')
        if int(size) != self.global_batch_size:
            raise DataError(f'data state was saved with a global batch of {int(size)} samples '
                            f'(world_size x batch_size), this run has {self.global_batch_size}: '
                            'batch counters then mean different samples; resume with the same '
                            'world_size x batch_size')
        vocabulary = getattr(self.source, 'vocabulary', None)
        if vocabulary is not None and 'vocabulary' in state:
            saved = np.asarray(state['vocabulary'])
            if saved.shape != (len(vocabulary),) or (saved != vocabulary.as_array()).any():
                raise DataError(f'data state was saved with a vocabulary of {saved.size} '
                                f'characters that differs from the {len(vocabulary)} of '
                                f'{self.source.name}: the ids would mean other characters; '
                                'resume on the text the run was trained on')
        self.batch = int(batch)

    def close(self):
        """Stop the prefetch thread; idempotent."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._images = self._staging()
            self._prefetcher = None

    def __repr__(self):
        return f'<Dataset {self.source.name}: batch {self.batch}, shape {self.shape}>'


def _prefetch_loop(fill, buffers, jobs, results):
    while (job := jobs.get()) is not None:
        t, k = job
        try:
            fill(t, *buffers[k])
            results.put(None)
        except Exception as e:  # handed to the main thread, which raises it
            results.put(e)


class Prefetcher:
    """Fills batch t+1 in a daemon thread while the caller uses batch t.

    ``fill(t, *buffer)`` writes batch t into one of the two ``buffers``;
    filling batch ``first`` (if not None) starts at once. ``get(t)`` returns
    the buffer holding batch t, valid until the next ``get``, and starts
    filling the other one with batch t+1. Asking for a batch other than the
    one prepared (a resume) discards it. An exception
    raised by ``fill`` is raised again by ``get``, in the caller's thread.
    """

    def __init__(self, fill, buffers, name='layerasync-prefetch', first=None):
        self._buffers = buffers
        self._jobs, self._results = queue.SimpleQueue(), queue.SimpleQueue()
        self._pending = None   # (batch, buffer index) being filled
        self._thread = threading.Thread(target=_prefetch_loop, name=name, daemon=True,
                                        args=(fill, buffers, self._jobs, self._results))
        self._thread.start()
        # The thread holds no reference to self: when self is collected, it is told to stop.
        self._stop = weakref.finalize(self, self._jobs.put, None)
        if first is not None:
            self._submit(first, 0)

    def _submit(self, t, k):
        self._jobs.put((t, k))
        self._pending = (t, k)

    def _wait(self):
        self._pending = None
        return self._results.get()

    def get(self, t):
        if not self._thread.is_alive():
            raise RuntimeError('Prefetcher.get() after close()')
        if self._pending is not None and self._pending[0] != t:
            self._wait()  # a batch nobody asks for any more; its error, if any, too
        if self._pending is None:
            self._submit(t, 0)
        k = self._pending[1]
        error = self._wait()
        if error is not None:
            raise error
        self._submit(t + 1, 1 - k)
        return self._buffers[k]

    def close(self):
        """Let the batch in progress finish, then stop and join the thread; idempotent."""
        if self._pending is not None:
            self._wait()
        self._stop()
        self._thread.join()
