"""Input (tops the user fills) and Data (batches from a data set, sharded by rank)."""
from ..data import DataError, Dataset
from .base import Layer, register


@register
class Input(Layer):
    """``input_param { shape { dim: ... } }``: one shape per top, or one for all."""
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

    def reshape(self, bottom, top):
        """Shapes stay as set up, or as the user reshaped the blobs (pycaffe style)."""

    def forward(self, bottom, top):
        """The data is already in the tops."""


@register
class Data(Layer):
    """Caffe's Data layer: this rank's shard of a data set, one batch per forward.

    ``data_param { source: "..." batch_size: B }`` (B per rank; sources in
    ``layerasync.data``) and ``transform_param { ... }``. Tops: ``data``
    (B, C, H', W') and optionally ``label`` (B,), both in the net's dtype.
    The rank, seed and other run settings come from ``self.data_options``
    (a ``DataOptions``; None: defaults). Batch t is a pure function of
    (seed, rank, t), so ``state_dict()`` — the batch counter — is all a
    snapshot needs. ``close()`` stops the prefetch thread.
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
            self.dataset = Dataset(p.source, p.batch_size, self.phase, self._transform_param(),
                                   self.data_options, self.dtype, name=self.name)
        except DataError as e:
            raise self.error(str(e)) from None
        top[0].reshape(self.dataset.shape)
        if len(top) > 1:
            top[1].reshape((p.batch_size,))

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
            self.dataset.next(top[0].data, top[1].data if len(top) > 1 else None)
        except DataError as e:
            raise self.error(str(e)) from None

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
