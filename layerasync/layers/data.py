"""Input (tops the user fills) and Data (batches from a data set, sharded by rank).

Both are source layers: each forward publishes, on the net's ``BatchContext``
(``self.batch``), the stream positions of the samples it produced, which key
the per-sample random draws of the layers below (dropout masks).
"""
import dataclasses
import math

import numpy as np

from ..data import DataError, DataOptions, Dataset, first_position, open_source
from ..memory import held_by
from .base import Layer, register


@register
class Input(Layer):
    """``input_param { shape { dim: ... } }``: one shape per top, or one for all.

    The samples of the k-th forward are taken to be the k-th batch of the
    shared sample stream, of which this rank holds its part (``rank`` and
    ``world_size`` from ``self.data_options``): for N = ``top[0]``'s axis 0,
    the positions ``(k * world_size + rank) * N + n`` (one process:
    ``k * N + n``), as a Data layer's would be. ``state_dict()`` holds k.
    """
    type = 'Input'
    param_field = 'input_param'
    num_bottom = (0, 0)
    num_top = (1, None)

    def setup(self, bottom, top):
        shapes = self.param.shape
        self.check(len(shapes) in (1, len(top)),
                   f'{len(shapes)} input shapes for {len(top)} tops; give one, or one per top')
        for j, blob in enumerate(top):
            dims = tuple(shapes[j if len(shapes) > 1 else 0].dim)
            self.check(all(d > 0 for d in dims),
                       f"input '{blob.name}' shape {dims}: dimensions must be positive")
            blob.reshape(dims)
        self.passes = 0

    def reshape(self, bottom, top):
        """Shapes stay as set up, or as the user reshaped the blobs (pycaffe style)."""

    def forward(self, bottom, top):
        """The data is already in the tops; publish its stream positions."""
        options = self.data_options
        rank, size = (options.rank, options.world_size) if options is not None else (0, 1)
        count = top[0].shape[0] if top[0].shape else 1
        self.batch.publish(self, first_position(self.passes, count, rank, size), count)
        self.passes += 1

    def state_dict(self):
        """``{'batch'}``: the number of forward passes so far (int64), for snapshots."""
        return {'batch': np.array(self.passes, np.int64)}

    def load_state_dict(self, state):
        """Continue from ``state`` (from ``state_dict``): the next forward is pass ``batch``."""
        self.check('batch' in state, "the saved state lacks 'batch', the number of forward "
                                     'passes, which keys the dropout masks of the next ones')
        batch = np.asarray(state['batch'])
        self.check(batch.shape == () and batch.dtype.kind in 'iu' and batch >= 0,
                   f"saved state 'batch' must be a non-negative integer, not {batch!r}")
        self.passes = int(batch)


@register
class Data(Layer):
    """Caffe's Data layer: this rank's shard of a data set, one batch per forward.

    ``data_param { source: "..." batch_size: B }`` (B per rank; sources in
    ``layerasync.data``) and ``transform_param { ... }``. Tops: ``data``
    (B, C, H', W') and optionally ``label`` (B,), both in the net's dtype; for
    a text source (``text:T``) ``data`` holds (B, T) character ids and
    ``label`` (B, T) the ids one character later.
    The rank, seed and other run settings come from ``self.data_options``
    (a ``DataOptions``; None: defaults). Batch t is a pure function of
    (seed, rank, t), so ``state_dict()`` — the batch counter — is all a
    snapshot needs; its samples are stream positions ``(t * world_size +
    rank) * B + n`` (see ``layerasync.data.sampler``). ``close()`` stops the
    prefetch thread.
    """
    type = 'Data'
    param_field = 'data_param'
    num_bottom = (0, 0)
    num_top = (1, 2)

    def setup(self, bottom, top):
        p = self.param
        self.check(p.batch_size > 0, f'data_param.batch_size must be a positive number of '
                                     f'samples per rank, not {p.batch_size}')
        self.check(p.rand_skip == 0, 'data_param.rand_skip is not supported: the order of '
                                     'the samples is set by DataOptions.seed; remove it')
        # backend and prefetch (a queue depth) only tune Caffe's readers: accepted, ignored.
        try:
            self._reserve_buffers()
            self.dataset = Dataset(self._source(), p.batch_size, self.phase, self._transform_param(),
                                   self.data_options, self.dtype, name=self.name)
        except DataError as e:
            given = self._source() != p.source
            raise self.error(f"{e} (source '{self._source()}' given by --source, in place of "
                             f"'{p.source}')" if given else str(e)) from None
        self.hold(held_by(self.dataset.source))
        top[0].reshape(self.dataset.shape)
        if len(top) > 1:
            top[1].reshape(self.dataset.label_shape)

    def _source(self):
        """The source string: the run's replacement (``DataOptions.source``), else the layer's."""
        options = self.data_options
        return options.source if options is not None and options.source else self.param.source

    def _reserve_buffers(self):
        """Reserve what the Dataset allocates before it does (its thread fills
        the prefetched batches at once): two of (uint8 images, data, labels),
        at most the source's sample size each, and in TRAIN the shuffled
        sample orders of two neighbouring epochs. The sample shape and count
        are known without reading the data (from the source's synthetic
        stand-in)."""
        options = self.data_options or DataOptions()
        if self.memory is None:
            return
        probe = open_source(self._source(), self.phase,
                            dataclasses.replace(options, synthetic=True))
        item, batch = self.dtype.itemsize, self.param.batch_size
        if options.prefetch:
            sample = math.prod(probe.shape) * (np.dtype(probe.dtype).itemsize + item)
            nbytes = 2 * batch * (sample + math.prod(probe.label_shape) * item)
            self.reserve(f'two prefetched batches of {batch}', nbytes)
        if self.phase == 'TRAIN':
            self.reserve(f'the sample orders of two epochs of {probe.count:,} samples',
                         2 * 8 * probe.count)

    def _transform_param(self):
        """``transform_param``, with Caffe's deprecated data_param spellings moved in
        (as Caffe's UpgradeNetDataTransformation does)."""
        param = self.spec.transform_param.copy()
        for name in ('scale', 'mean_file', 'crop_size', 'mirror'):
            if self.param.has(name):
                self.check(not param.has(name), f'{name} given in both data_param (deprecated) '
                                                'and transform_param; keep the transform_param one')
                setattr(param, name, getattr(self.param, name))
        return param

    def reshape(self, bottom, top):
        """The shapes are fixed at setup."""

    def forward(self, bottom, top):
        try:
            first = self.dataset.next(top[0].data, top[1].data if len(top) > 1 else None)
        except DataError as e:
            raise self.error(str(e)) from None
        self.batch.publish(self, first, self.param.batch_size)

    def state_dict(self):
        """``{'batch', 'global_batch_size'}``: int64 arrays, for snapshots."""
        return self.dataset.state_dict()

    def load_state_dict(self, state):
        try:
            self.dataset.load_state_dict(state)
        except DataError as e:
            raise self.error(str(e)) from None

    def close(self):
        self.dataset.close()
