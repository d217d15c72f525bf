"""Data sets, sharding, transforms, prefetching and the Data layer."""
import gc
import gzip
import os
import struct
import threading

import numpy as np
import pytest

import layerasync
from layerasync import TEST, TRAIN, LayerError, proto, schema
from layerasync.data import (DataError, DataOptions, Dataset, Prefetcher, ShardSampler,
                             Transform, open_source, read_blobproto)
from layerasync.data.sources import DIGITS_PATH, MNIST_SUBSET_PATH

# ------------------------------------------------------------------ file writers


def write_idx(path, array, gz=False, magic=None):
    array = np.asarray(array, np.uint8)
    head = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    raw = head + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()
    (gzip.open if gz else open)(str(path) + ('.gz' if gz else ''), 'wb').write(raw)


def make_mnist(directory, n_train=50, n_test=20, gz=False, seed=0):
    """Small IDX files in ``directory``; returns {phase: (images, labels)}."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    out = {}
    for phase, prefix, n in ((TRAIN, 'train', n_train), (TEST, 't10k', n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte'), images, gz)
        write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte'), labels, gz)
        out[phase] = images, labels
    return out


def cifar_records(labels, images):
    return np.concatenate([np.asarray(labels, np.uint8)[:, None],
                           images.reshape(len(labels), -1)], axis=1).tobytes()


def make_cifar(directory, per_batch=6, n_test=8, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    out = {TRAIN: ([], []), TEST: ([], [])}
    names = [(TRAIN, f'data_batch_{i}.bin', per_batch) for i in range(1, 6)]
    for phase, name, n in names + [(TEST, 'test_batch.bin', n_test)]:
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with open(os.path.join(directory, name), 'wb') as f:
            f.write(cifar_records(labels, images))
        out[phase][0].append(images)
        out[phase][1].append(labels)
    return {p: (np.concatenate(i), np.concatenate(l)) for p, (i, l) in out.items()}


def read_all(source):
    images = np.empty((source.count,) + source.shape, np.uint8)
    source.read(np.arange(source.count), images)
    return images


def batches(source, batch_size, n, phase=TRAIN, transform=None, **options):
    """``n`` consecutive (data, label) batches of a Dataset."""
    ds = Dataset(source, batch_size, phase, transform, DataOptions(**options), np.float64)
    out = []
    for _ in range(n):
        data, label = np.empty(ds.shape), np.empty(batch_size)
        ds.next(data, label)
        out.append((data, label))
    ds.close()
    return out


def transform_param(text):
    return proto.parse(text, schema.TransformationParameter)


# ------------------------------------------------------------------ readers


@pytest.mark.parametrize('gz', [False, True])
def test_mnist_reader(tmp_path, gz):
    expected = make_mnist(tmp_path / 'mnist', gz=gz)
    for phase in (TRAIN, TEST):
        source = open_source(f'mnist:{tmp_path / "mnist"}', phase)
        images, labels = expected[phase]
        assert source.shape == (1, 28, 28) and source.classes == 10
        np.testing.assert_array_equal(read_all(source)[:, 0], images)
        np.testing.assert_array_equal(source.labels, labels)


def test_relative_paths_resolve_against_root(tmp_path):
    expected = make_mnist(tmp_path / 'sets' / 'mnist')
    source = open_source('mnist:sets/mnist', TEST, DataOptions(root=str(tmp_path)))
    np.testing.assert_array_equal(source.labels, expected[TEST][1])


def test_cifar10_reader(tmp_path):
    expected = make_cifar(tmp_path / 'cifar-10-batches-bin')
    # DIR may be the batches' directory or the one the archive was unpacked in.
    for directory in (tmp_path / 'cifar-10-batches-bin', tmp_path):
        for phase in (TRAIN, TEST):
            source = open_source(f'cifar10:{directory}', phase)
            images, labels = expected[phase]
            assert source.shape == (3, 32, 32) and source.count == len(labels)
            np.testing.assert_array_equal(read_all(source), images)
            np.testing.assert_array_equal(source.labels, labels)


def test_embedded_digits():
    assert os.path.getsize(DIGITS_PATH) < 100_000
    train, test = open_source('digits', TRAIN), open_source('digits', TEST)
    assert (train.count, test.count) == (1437, 360)
    assert train.shape == test.shape == (1, 8, 8) and train.classes == 10
    for source in (train, test):
        images = read_all(source)
        assert images.dtype == np.uint8 and images.max() == 16
        counts = np.bincount(source.labels, minlength=10)
        share = source.count / 10
        assert counts.min() >= 0.9 * share and counts.max() <= 1.1 * share  # stratified
    # Disjoint parts: no test image is also a training image with the same label.
    seen = {(img.tobytes(), lab) for img, lab in zip(read_all(train), train.labels)}
    assert sum((img.tobytes(), lab) in seen for img, lab in zip(read_all(test), test.labels)) < 5


def test_synthetic_source():
    source = open_source('synthetic:3x5x7:4:30', TRAIN, DataOptions(seed=3))
    assert (source.shape, source.classes, source.count) == ((3, 5, 7), 4, 30)
    images, every = read_all(source), np.arange(30)
    labels = source.read_labels(every)
    assert images.shape == (30, 3, 5, 7) and labels.min() >= 0 and labels.max() < 4
    assert len(np.unique(labels)) == 4
    again = open_source('synthetic:3x5x7:4:30', TRAIN, DataOptions(seed=3))
    np.testing.assert_array_equal(read_all(again), images)
    np.testing.assert_array_equal(again.read_labels(every), labels)
    np.testing.assert_array_equal(source.read_labels(np.array([9, 2])), labels[[9, 2]])
    other = open_source('synthetic:3x5x7:4:30', TRAIN, DataOptions(seed=4))
    assert not np.array_equal(read_all(other), images)
    assert not np.array_equal(read_all(open_source('synthetic:3x5x7:4:30', TEST)), images)
    # An image is the same whichever batch reads it.
    part = np.empty((2, 3, 5, 7), np.uint8)
    source.read(np.array([17, 4]), part)
    np.testing.assert_array_equal(part, images[[17, 4]])
    default = open_source('synthetic:1x2x2')
    assert (default.classes, default.count) == (10, 1024)


def test_a_huge_synthetic_set_costs_nothing_and_sizes_are_bounded():
    huge = open_source('synthetic:1x2x2:10:2147483647')
    assert huge.count == 2 ** 31 - 1 and huge.read_labels(np.array([2 ** 31 - 2])) < 10
    for text, says in (('synthetic:1x2x2:10:2147483648', 'COUNT is 2,147,483,648'),
                       ('synthetic:1x2x2:10:' + '9' * 22, 'COUNT is 9,999'),
                       ('synthetic:1x2x2:16777217', 'CLASSES is 16,777,217'),
                       ('synthetic:1x2x3000000000', 'a dimension is 3,000,000,000')):
        with pytest.raises(DataError, match=f"source '{text}': {says}.*allowed"):
            open_source(text)


@pytest.mark.parametrize('text, shape, count, max_value', [
    ('mnist:/nonexistent/mnist', (1, 28, 28), 60000, 255),
    ('cifar10:/nonexistent/cifar', (3, 32, 32), 50000, 255),
    ('digits', (1, 8, 8), 1437, 16),
])
def test_synthetic_stand_ins_need_no_files(text, shape, count, max_value):
    source = open_source(text, TRAIN, DataOptions(synthetic=True))
    assert (source.shape, source.count, source.classes) == (shape, count, 10)
    images = np.empty((64,) + shape, np.uint8)
    source.read(np.arange(64), images)
    assert images.max() <= max_value


# ------------------------------------------------------------------ bad input


def test_missing_mnist_names_path_site_and_files(tmp_path):
    with pytest.raises(DataError) as e:
        open_source('mnist:nowhere', TRAIN, DataOptions(root=str(tmp_path)))
    message = str(e.value)
    assert str(tmp_path / 'nowhere' / 'train-images-idx3-ubyte') in message
    assert 'yann.lecun.com/exdb/mnist' in message and 'does not exist' in message
    for name in ('train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        assert name in message


def test_missing_cifar_batch(tmp_path):
    make_cifar(tmp_path)
    os.remove(tmp_path / 'data_batch_3.bin')
    with pytest.raises(DataError) as e:
        open_source(f'cifar10:{tmp_path}', TRAIN)
    message = str(e.value)
    assert str(tmp_path / 'data_batch_3.bin') in message
    assert 'cs.toronto.edu/~kriz/cifar.html' in message and 'test_batch.bin' in message


@pytest.mark.parametrize('damage, complaint', [
    (lambda d: write_idx(d / 'train-images-idx3-ubyte', np.zeros((2, 28, 28)),
                         magic=b'\x00\x00\x0d\x03'), 'bad magic number 0x00000d03'),
    (lambda d: write_idx(d / 'train-images-idx3-ubyte', np.zeros((2, 784))),
     '2 dimensions, expected 3'),
    (lambda d: open(d / 'train-images-idx3-ubyte', 'ab').write(b'\x00'), 'truncated or corrupt'),
    (lambda d: open(d / 'train-labels-idx1-ubyte', 'r+b').truncate(30), 'implies 58'),
    (lambda d: open(d / 'train-labels-idx1-ubyte', 'r+b').truncate(6), 'truncated'),
    (lambda d: open(d / 'train-labels-idx1-ubyte', 'r+b').truncate(2), 'too short'),
    (lambda d: write_idx(d / 'train-labels-idx1-ubyte', np.full(50, 11)), 'label 11'),
    (lambda d: write_idx(d / 'train-labels-idx1-ubyte', np.zeros(49)), '49 labels'),
])
def test_corrupt_idx(tmp_path, damage, complaint):
    make_mnist(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError) as e:
        open_source(f'mnist:{tmp_path}', TRAIN)
    assert complaint in str(e.value) and str(tmp_path) in str(e.value)


def test_corrupt_gzip(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / 't10k-images-idx3-ubyte.gz'
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=f'{path}: cannot read'):
        open_source(f'mnist:{tmp_path}', TEST)


def test_corrupt_cifar(tmp_path):
    make_cifar(tmp_path)
    path = tmp_path / 'test_batch.bin'
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=f'{path}: 24583 bytes is not .* 3073-byte records'):
        open_source(f'cifar10:{tmp_path}', TEST)
    path.write_bytes(cifar_records([3, 10], np.zeros((2, 3072), np.uint8)))
    with pytest.raises(DataError, match=f'{path}: record 1 has label 10'):
        open_source(f'cifar10:{tmp_path}', TEST)


@pytest.mark.parametrize('text, complaint', [
    ('imagenet:/data', "unknown data source 'imagenet:/data'; known sources: digits"),
    ('', 'no data source given'),
    ('digits:/x', 'takes no directory'),
    ('mnist', 'name the directory'),
    ('synthetic:3x32', 'synthetic:CxHxW[:CLASSES[:COUNT]]'),
    ('synthetic:3x32x32:0', 'positive'),
    ('synthetic:3x32x32:ten', 'synthetic:CxHxW'),
])
def test_bad_source_strings(text, complaint):
    with pytest.raises(DataError) as e:
        open_source(text, TRAIN)
    assert complaint in str(e.value)
    if complaint.startswith('unknown'):
        for form in ('mnist:DIR', 'cifar10:DIR', 'synthetic:CxHxW'):
            assert form in str(e.value)


@pytest.mark.parametrize('text, complaint', [
    ('crop_size: 9', 'crop_size 9 does not fit images of 8x8'),
    ('mean_value: 1 mean_value: 2', '2 mean_value entries for 1-channel'),
    ('mean_value: 1 mean_file: "m.npy"', 'not both'),
    ('mean_file: "absent.binaryproto"', 'no such mean file'),
    ('force_gray: true', 'force_gray'),
])
def test_bad_transform_params(text, complaint):
    with pytest.raises(DataError, match=complaint):
        Transform(transform_param(text), (1, 8, 8))


def test_bad_options():
    with pytest.raises(ValueError, match='rank must be in 0..1'):
        DataOptions(rank=2, world_size=2)
    with pytest.raises(ValueError, match='world_size'):
        DataOptions(world_size=0)
    with pytest.raises(ValueError, match='seed'):
        DataOptions(seed=-1)


# ------------------------------------------------------------------ sharding and order


def test_two_ranks_at_b_see_what_one_rank_at_2b_sees():
    # 23 samples, global batch 8: batches 2 and 5 straddle epoch boundaries.
    source, n = 'synthetic:2x5x5:7:23', 9
    transform = transform_param('crop_size: 3 mirror: true mean_value: [3, 1] scale: 0.5')
    for phase in (TRAIN, TEST):
        whole = batches(source, 8, n, phase, transform, seed=5)
        ranks = [batches(source, 4, n, phase, transform, seed=5, rank=r, world_size=2)
                 for r in range(2)]
        for t in range(n):
            np.testing.assert_array_equal(
                np.concatenate([ranks[0][t][0], ranks[1][t][0]]), whole[t][0])
            np.testing.assert_array_equal(
                np.concatenate([ranks[0][t][1], ranks[1][t][1]]), whole[t][1])


def test_epochs_are_permutations_and_cross_seamlessly():
    sampler = ShardSampler(10, 3, seed=1)
    stream = np.concatenate([sampler.indices(t) for t in range(10)])  # 30 = three epochs
    epochs = stream.reshape(3, 10)
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(10))
    assert len({tuple(o) for o in epochs}) == 3  # a new order every epoch
    test = ShardSampler(10, 4, rank=1, world_size=2, shuffle=False)
    np.testing.assert_array_equal(test.indices(0), [4, 5, 6, 7])
    np.testing.assert_array_equal(test.indices(1), [2, 3, 4, 5])  # positions 12..15


def test_order_is_a_function_of_the_seed():
    first = batches('digits', 16, 3, seed=7)
    again = batches('digits', 16, 3, seed=7)
    other = batches('digits', 16, 3, seed=8)
    for (d1, l1), (d2, l2) in zip(first, again):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other))
    # TEST reads the file in order, whatever the seed.
    test = batches('digits', 16, 1, TEST, seed=8)[0][1]
    np.testing.assert_array_equal(test, open_source('digits', TEST).labels[:16])


# ------------------------------------------------------------------ transforms


def reference_transform(images, tops, lefts, flips, crop, mean, scale):
    """Caffe's DataTransformer, one float64 sample at a time."""
    out = []
    for image, top, left, flip in zip(images.astype(np.float64), tops, lefts, flips):
        h, w = (crop, crop) if crop else image.shape[1:]
        x = image[:, top:top + h, left:left + w] - mean[:, top:top + h, left:left + w]
        out.append((x[:, :, ::-1] if flip else x) * scale)
    return np.array(out)


def test_transform_train_matches_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 7, 6), dtype=np.uint8)
    positions = np.arange(100, 164)
    t = Transform(transform_param('crop_size: 4 mirror: true mean_value: [10, 20, 30] scale: 0.5'),
                  (3, 7, 6), TRAIN, seed=2, dtype=np.float64)
    tops, lefts, flips = t.windows(positions)
    assert set(tops) == {0, 1, 2, 3} and set(lefts) == {0, 1, 2} and 0 < flips.sum() < 64
    out = np.empty((64, 3, 4, 4))
    t.apply(images, positions, out)
    mean = np.broadcast_to(np.array([10., 20., 30.])[:, None, None], (3, 7, 6))
    np.testing.assert_allclose(out, reference_transform(images, tops, lefts, flips, 4, mean, 0.5))
    # The choices are a function of (seed, position) only.
    np.testing.assert_array_equal(t.windows(positions[10:20])[0], tops[10:20])


def test_transform_test_phase_centre_crops_without_mirror():
    images = np.arange(2 * 7 * 6, dtype=np.uint8).reshape(2, 1, 7, 6)
    t = Transform(transform_param('crop_size: 4 mirror: true mean_value: 3'), (1, 7, 6), TEST)
    out = np.empty((2, 1, 4, 4), np.float32)
    t.apply(images, np.arange(2), out)
    np.testing.assert_array_equal(out, images[:, :, 1:5, 1:5] - 3.0)


def test_transform_scale_only_in_float32():
    images = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    out = np.empty((1, 1, 4, 4), np.float32)
    Transform(transform_param('scale: 0.0625'), (1, 4, 4)).apply(images, [0], out)
    np.testing.assert_array_equal(out, images.astype(np.float32) * np.float32(0.0625))


def varint(n):
    out = b''
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def blobproto_modern(mean, shape=None):
    """BlobProto with shape { dim } (packed) and packed float data, as Caffe writes it."""
    dims = b''.join(varint(d) for d in (shape or mean.shape))
    shape = b'\x0a' + varint(len(dims)) + dims                     # BlobShape.dim = 1, packed
    data = mean.astype('<f4').tobytes()
    return (b'\x3a' + varint(len(shape)) + shape                     # shape = 7
            + b'\x2a' + varint(len(data)) + data)                    # data = 5, packed


def blobproto_legacy(mean):
    """BlobProto with num/channels/height/width and unpacked float data, plus a diff."""
    c, h, w = mean.shape
    out = b'\x08\x01' + b'\x10' + varint(c) + b'\x18' + varint(h) + b'\x20' + varint(w)
    out += b''.join(b'\x2d' + struct.pack('<f', v) for v in mean.ravel())   # data = 5, fixed32
    return out + b'\x32\x04' + struct.pack('<f', 9.0)                       # diff = 6: ignored


@pytest.mark.parametrize('kind', ['modern', 'legacy', 'npy'])
def test_mean_file(tmp_path, kind):
    rng = np.random.default_rng(1)
    mean = rng.uniform(0, 50, (2, 6, 5)).astype(np.float32)
    if kind == 'npy':
        name = 'mean.npy'
        np.save(tmp_path / name, mean[None])
    else:
        name = 'mean.binaryproto'
        encode = blobproto_modern if kind == 'modern' else blobproto_legacy
        (tmp_path / name).write_bytes(encode(mean[None] if kind == 'modern' else mean))
    images = rng.integers(0, 256, (16, 2, 6, 5), dtype=np.uint8)
    positions = np.arange(16)
    t = Transform(transform_param(f'mean_file: "{name}" crop_size: 3 mirror: true scale: 2'),
                  (2, 6, 5), TRAIN, seed=4, root=str(tmp_path), dtype=np.float64)
    out = np.empty((16, 2, 3, 3))
    t.apply(images, positions, out)
    np.testing.assert_allclose(out, reference_transform(images, *t.windows(positions), 3,
                                                        mean.astype(np.float64), 2.0))


def test_corrupt_mean_files(tmp_path):
    mean = np.ones((1, 4, 4), np.float32)
    good = blobproto_modern(mean)
    with pytest.raises(DataError, match='<m>: truncated protobuf'):
        read_blobproto(good[:-3], '<m>')
    with pytest.raises(DataError, match=r'shape \(1, 4, 4\) holds 15 values'):
        read_blobproto(blobproto_modern(np.ones(15), shape=(1, 4, 4)), '<m>')
    with pytest.raises(DataError, match='wire type 3'):
        read_blobproto(b'\x0b' + good, '<m>')
    (tmp_path / 'm.binaryproto').write_bytes(good)
    with pytest.raises(DataError, match='holds shape .* images are .*uncropped'):
        Transform(transform_param('mean_file: "m.binaryproto"'), (1, 5, 5), root=str(tmp_path))


# ------------------------------------------------------------------ prefetching and resume


def test_prefetch_equals_synchronous():
    transform = transform_param('crop_size: 6 mirror: true scale: 0.25')
    on = batches('digits', 50, 40, TRAIN, transform, prefetch=True)
    off = batches('digits', 50, 40, TRAIN, transform, prefetch=False)
    for (d1, l1), (d2, l2) in zip(on, off):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)


def prefetch_threads(name):
    return [t for t in threading.enumerate() if t.name == f'layerasync-prefetch-{name}']


def test_prefetch_thread_stops():
    ds = Dataset('digits', 4, name='closing')
    assert len(prefetch_threads('closing')) == 1
    ds.next(np.empty(ds.shape, np.float32))
    ds.close()
    ds.close()
    assert not prefetch_threads('closing')
    data = np.empty(ds.shape, np.float32)
    ds.next(data)  # still serves batches, now in this thread
    np.testing.assert_array_equal(data, batches('digits', 4, 2)[1][0])
    # A forgotten Dataset does not keep its thread alive.
    Dataset('digits', 4, name='forgotten')
    gc.collect()
    for thread in prefetch_threads('forgotten'):
        thread.join(timeout=5)
    assert not prefetch_threads('forgotten')


def test_prefetch_failure_is_raised_in_the_caller():
    def fill(t, out):
        if t == 2:
            raise DataError(f'batch {t} is unreadable')
        out[...] = t

    prefetcher = Prefetcher(fill, [(np.empty(1),), (np.empty(1),)], name='layerasync-prefetch-f')
    assert prefetcher.get(0)[0][0] == 0 and prefetcher.get(1)[0][0] == 1
    with pytest.raises(DataError, match='batch 2 is unreadable'):
        prefetcher.get(2)
    assert prefetcher.get(7)[0][0] == 7  # after a failure or a jump: carries on
    prefetcher.close()
    assert not prefetch_threads('f')


@pytest.mark.parametrize('prefetch', [True, False])
def test_state_dict_resumes_exactly(tmp_path, prefetch):
    options = DataOptions(seed=2, prefetch=prefetch)
    transform = transform_param('crop_size: 5 mirror: true')
    expected = batches('digits', 100, 20, TRAIN, transform, seed=2)
    first = Dataset('digits', 100, TRAIN, transform, options, np.float64)
    data, label = np.empty(first.shape), np.empty(100)
    for _ in range(13):
        first.next(data, label)
    np.savez(tmp_path / 'state.npz', **first.state_dict())
    first.close()
    second = Dataset('digits', 100, TRAIN, transform, options, np.float64)
    with np.load(tmp_path / 'state.npz', allow_pickle=False) as f:
        second.load_state_dict(dict(f))
    for t in range(13, 20):
        second.next(data, label)
        np.testing.assert_array_equal(data, expected[t][0])
        np.testing.assert_array_equal(label, expected[t][1])
    second.close()


def test_bad_state_dict():
    ds = Dataset('digits', 10, options=DataOptions(prefetch=False))
    with pytest.raises(DataError, match='lacks global_batch_size'):
        ds.load_state_dict({'batch': np.array(3)})
    with pytest.raises(DataError, match='global batch of 20 samples .* this run has 10'):
        ds.load_state_dict({'batch': np.array(3), 'global_batch_size': np.array(20)})
    with pytest.raises(DataError, match='non-negative integer'):
        ds.load_state_dict({'batch': np.array(-1), 'global_batch_size': np.array(10)})


# ------------------------------------------------------------------ the Data layer in a net

NET = '''
name: "digits"
layer {
  name: "digits"  type: "Data"  top: "data"  top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.0625 crop_size: 6 mirror: true }
  data_param { source: "digits" batch_size: 32 }
}
layer {
  name: "digits"  type: "Data"  top: "data"  top: "label"
  include { phase: TEST }
  transform_param { scale: 0.0625 crop_size: 6 }
  data_param { source: "digits" batch_size: 40 }
}
layer {
  name: "ip"  type: "InnerProduct"  bottom: "data"  top: "ip"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } }
}
layer { name: "loss"  type: "SoftmaxWithLoss"  bottom: "ip"  bottom: "label"  top: "loss" }
'''


def data_layer(net):
    return net.layer_dict['digits']


def test_data_layer_in_a_net():
    options = DataOptions(seed=3, rank=1, world_size=2)
    net = layerasync.Net(NET, TRAIN, data=options)
    assert net.blobs['data'].shape == (32, 1, 6, 6) and net.blobs['label'].shape == (32,)
    transform = transform_param('scale: 0.0625 crop_size: 6 mirror: true')
    expected = batches('digits', 32, 3, TRAIN, transform, seed=3, rank=1, world_size=2)
    for data, label in expected:
        net.forward()
        assert net.blobs['data'].data.dtype == np.float32 and np.isfinite(net.loss)
        np.testing.assert_allclose(net.blobs['data'].data, data, rtol=1e-6)
        np.testing.assert_array_equal(net.blobs['label'].data, label)
    assert int(data_layer(net).state_dict()['batch']) == 3
    data_layer(net).close()
    test = layerasync.Net(NET, TEST)  # data=None: default options
    test.forward()
    assert test.blobs['data'].shape == (40, 1, 6, 6)
    np.testing.assert_array_equal(test.blobs['label'].data, open_source('digits', TEST).labels[:40])
    data_layer(test).close()


def test_data_layer_resume_through_snapshot_arrays(tmp_path):
    net = layerasync.Net(NET, TRAIN, data=DataOptions(prefetch=False))
    for _ in range(4):
        net.forward()
    np.savez(tmp_path / 'data.npz', **data_layer(net).state_dict())
    net.forward()
    fifth = net.blobs['data'].data.copy()
    resumed = layerasync.Net(NET, TRAIN)
    with np.load(tmp_path / 'data.npz', allow_pickle=False) as f:
        data_layer(resumed).load_state_dict(dict(f))
    resumed.forward()
    np.testing.assert_array_equal(resumed.blobs['data'].data, fifth)
    data_layer(resumed).close()


def net_with(data_param, transform='', tops='top: "data" top: "label"'):
    return (f'layer {{ name: "feed" type: "Data" {tops} transform_param {{ {transform} }} '
            f'data_param {{ {data_param} }} }}')


@pytest.mark.parametrize('data_param, transform, complaint', [
    ('source: "digits"', '', 'batch_size must be a positive number'),
    ('source: "digits" batch_size: 4 rand_skip: 10', '', 'rand_skip is not supported'),
    ('source: "imagenet" batch_size: 4', '', 'unknown data source'),
    ('source: "mnist:absent" batch_size: 4', '', 'absent/train-images-idx3-ubyte: no such file'),
    ('source: "digits" batch_size: 4', 'crop_size: 20', 'crop_size 20 does not fit'),
    ('source: "digits" batch_size: 4 scale: 2', 'scale: 3', 'scale given in both'),
])
def test_data_layer_errors_name_the_layer(tmp_path, data_param, transform, complaint):
    with pytest.raises(LayerError) as e:
        layerasync.Net(net_with(data_param, transform), TRAIN, data=DataOptions(root=str(tmp_path)))
    message = str(e.value)
    assert message.startswith('<string>:1:1: layer \'feed\' (Data): ') and complaint in message


def test_data_layer_reports_a_failure_in_the_prefetch_thread(monkeypatch):
    read = layerasync.data.ArraySource.read
    calls = []

    def failing_read(self, indices, out):
        calls.append(len(indices))
        if len(calls) == 2:
            raise DataError('disk on fire')
        read(self, indices, out)

    monkeypatch.setattr(layerasync.data.ArraySource, 'read', failing_read)
    net = layerasync.Net(net_with('source: "digits" batch_size: 4'), TRAIN)
    net.forward()
    with pytest.raises(LayerError, match="^<string>:1:1: layer 'feed' \\(Data\\): disk on fire$"):
        net.forward()
    net.forward()  # the batch is prepared again
    net.layer_dict['feed'].close()


def test_data_layer_legacy_transform_fields_and_single_top():
    net = layerasync.Net(net_with('source: "digits" batch_size: 5 scale: 0.5 crop_size: 4',
                                  tops='top: "data"'), TEST)
    net.forward()
    images = read_all(open_source('digits', TEST))[:5, :, 2:6, 2:6]
    np.testing.assert_array_equal(net.blobs['data'].data, images * np.float32(0.5))
    data_layer_ = net.layer_dict['feed']
    data_layer_.close()


def test_synthetic_option_times_a_net_without_files():
    text = net_with('source: "cifar10:/no/such/dir" batch_size: 3',
                    'mean_value: [125, 123, 114] scale: 0.015625 mirror: true')
    net = layerasync.Net(text, TRAIN, data=DataOptions(synthetic=True, prefetch=False))
    net.forward()
    assert net.blobs['data'].shape == (3, 3, 32, 32)
    assert np.abs(net.blobs['data'].data).max() <= (255 - 113) / 64
    assert set(net.blobs['label'].data) <= set(range(10))


# ------------------------------------------------------------------ the embedded MNIST subset


def test_embedded_mnist_subset():
    """4,000 / 1,000 real 28x28 digits, 400 / 100 of each class, stored class-interleaved
    (so any prefix of TEST is balanced), and no image in both parts."""
    assert os.path.getsize(MNIST_SUBSET_PATH) < 1_500_000
    train, test = open_source('mnist-subset', TRAIN), open_source('mnist-subset', TEST)
    assert (train.count, test.count) == (4000, 1000)
    assert train.shape == test.shape == (1, 28, 28)
    assert train.classes == test.classes == 10 and train.max_value == 255
    pixels = {}
    for phase, source, per_class in ((TRAIN, train, 400), (TEST, test, 100)):
        images = pixels[phase] = read_all(source)
        assert images.dtype == np.uint8 and images.min() == 0 and images.max() == 255
        assert source.labels.dtype == np.int64
        np.testing.assert_array_equal(source.labels, np.tile(np.arange(10), per_class))
        # Handwriting, not noise: mostly background, strokes near the centre.
        assert 0.1 < (images > 0).mean() < 0.3
        frame = np.ones((28, 28), bool)
        frame[2:-2, 2:-2] = False
        assert images[:, 0, frame].mean() < 2 and images[:, 0, 8:20, 8:20].mean() > 60
    seen = {image.tobytes() for image in pixels[TRAIN]}
    assert len(seen) == 4000 and not any(image.tobytes() in seen for image in pixels[TEST])


@pytest.mark.parametrize('text, complaint', [
    ('mnist-subset:data/mnist', "source 'mnist-subset:data/mnist': mnist-subset is embedded in "
                                'the package and takes no directory; write source: '
                                '"mnist-subset"'),
    ('mnist-subset:', 'takes no directory'),
    ('imagenet', 'known sources: digits (the embedded UCI digits), mnist-subset'),
])
def test_mnist_subset_source_strings(text, complaint):
    with pytest.raises(DataError) as e:
        open_source(text, TEST)
    assert complaint in str(e.value)


def test_mnist_subset_synthetic_stand_in_has_its_counts():
    for phase, count in ((TRAIN, 4000), (TEST, 1000)):
        source = open_source('mnist-subset', phase, DataOptions(synthetic=True))
        assert (source.shape, source.count, source.classes) == ((1, 28, 28), count, 10)
        assert source.name == 'synthetic stand-in for mnist-subset'


def test_zoo_lenet_learns_the_mnist_subset():
    """The zoo's LeNet and solver, their sources set to the subset in memory: 40 steps
    take the test loss (all 1,000 TEST images) from about log(10) to under half of it
    and the accuracy from chance to above 75%."""
    from layerasync import models
    from layerasync.net import load_net_param
    from layerasync.solver import get_solver, load_solver_param
    param = load_solver_param(models.path('lenet', 'solver'))
    param.net_param = load_net_param(models.path('lenet'))
    sources = []
    for layer in param.net_param.layer:
        if layer.type == 'Data':
            sources.append(layer.data_param.source)
            layer.data_param.source = 'mnist-subset'
    assert sources == ['mnist:data/mnist'] * 2
    param.test_iter = [10]   # 10 x batch 100: every TEST image once
    solver = get_solver(param, data=DataOptions(prefetch=False))
    try:
        before = solver.test()
        solver.step(40)
        after = solver.test()
    finally:
        solver.close()
    assert before['loss'] == pytest.approx(np.log(10), rel=0.15) and before['accuracy'] < 0.3
    assert after['loss'] < 0.5 * before['loss'] and after['accuracy'] > 0.75, (before, after)
