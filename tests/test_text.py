"""The character-level text source: vocabulary, split, windows, sharding, errors."""
import numpy as np
import pytest

from layerasync import TEST, TRAIN, proto, schema
from layerasync.data import DataError, DataOptions, Dataset, open_source
from layerasync.data.text import SPLIT, Vocabulary, embedded_text

CORPUS = 'the quick brown fox jumps over the lazy dog.\n' * 40 + 'Zebra!\n'


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / 'corpus.txt'
    path.write_text(CORPUS, encoding='utf-8')
    return path


def batches(source, batch, n, phase=TRAIN, **options):
    data = Dataset(source, batch, phase, options=DataOptions(prefetch=False, **options))
    out = []
    for _ in range(n):
        x, y = np.empty(data.shape, np.float32), np.empty(data.label_shape, np.float32)
        data.next(x, y)
        out.append((x, y))
    return data, out


def test_embedded_text_ships_with_python_and_its_vocabulary():
    text = embedded_text()
    assert len(text) > 300_000
    vocabulary = Vocabulary.of(text)
    assert 60 <= len(vocabulary) <= 200
    sample = text[1000:1300]
    assert vocabulary.decode(vocabulary.encode(sample)) == sample
    train = open_source('text:128', TRAIN)
    test = open_source('text:128', TEST)
    cut = int(len(text) * SPLIT)
    assert train.count == cut - 128
    assert test.count == (len(text) - cut - 129) // 128 + 1
    assert train.classes == test.classes == len(vocabulary)


def test_windows_labels_split_and_test_tiling(text_file):
    vocabulary = Vocabulary.of(CORPUS)
    cut = int(len(CORPUS) * SPLIT)
    train = open_source(f'text:8:{text_file}', TRAIN)
    assert train.shape == (8,) and train.label_shape == (8,) and train.count == cut - 8
    x = np.empty((3, 8), train.dtype)
    train.read(np.array([0, 5, cut - 9]), x)
    y = train.read_labels(np.array([0, 5, cut - 9]))
    for row, labels, start in zip(x, y, (0, 5, cut - 9)):
        assert vocabulary.decode(row) == CORPUS[start:start + 8]
        assert vocabulary.decode(labels) == CORPUS[start + 1:start + 9]
    # TEST: non-overlapping windows of the last 10%, in order, each character once.
    test = open_source(f'text:8:{text_file}', TEST)
    x = np.empty((test.count, 8), test.dtype)
    test.read(np.arange(test.count), x)
    assert vocabulary.decode(x) == CORPUS[cut:cut + 8 * test.count]
    assert cut + 8 * test.count + 1 <= len(CORPUS) < cut + 8 * (test.count + 1) + 1
    # The vocabulary is the whole file's: characters only in TEST ('Z') have ids.
    assert 'Z' in train.vocabulary.chars and train.vocabulary == test.vocabulary


def test_dataset_blobs_are_ids_and_next_ids(text_file):
    data, out = batches(f'text:16:{text_file}', 4, 3)
    assert data.shape == (4, 16) and data.label_shape == (4, 16)
    for x, y in out:
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
        assert x.dtype == np.float32 and (x == np.round(x)).all()


def test_p_ranks_at_b_read_what_one_rank_reads_at_pb(text_file):
    source = f'text:8:{text_file}'
    _, whole = batches(source, 6, 4, seed=3)
    parts = [batches(source, 3, 4, seed=3, rank=r, world_size=2)[1] for r in range(2)]
    for t in range(4):
        np.testing.assert_array_equal(np.concatenate([parts[0][t][0], parts[1][t][0]]),
                                      whole[t][0])
        np.testing.assert_array_equal(np.concatenate([parts[0][t][1], parts[1][t][1]]),
                                      whole[t][1])
    _, other_seed = batches(source, 6, 1, seed=4)
    assert not np.array_equal(other_seed[0][0], whole[0][0])


def test_synthetic_tokens_and_stand_ins(text_file):
    source = open_source('synthetic:16:50:100', TRAIN)
    assert source.shape == (16,) and source.classes == 50 and source.count == 100
    x = np.empty((2, 16), source.dtype)
    source.read(np.array([7, 8]), x)
    y = source.read_labels(np.array([7, 8]))
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert x.max() < 50 and x.min() >= 0
    real = open_source(f'text:8:{text_file}', TEST)
    stand_in = open_source(f'text:8:{text_file}', TEST, DataOptions(synthetic=True))
    assert (stand_in.count, stand_in.classes, stand_in.shape) == (real.count, real.classes,
                                                                  real.shape)


def test_vocabulary_is_kept_in_the_state_and_checked(tmp_path, text_file):
    data = Dataset(f'text:8:{text_file}', 2, TRAIN, options=DataOptions(prefetch=False))
    state = data.state_dict()
    assert Vocabulary.from_array(state['vocabulary']) == Vocabulary.of(CORPUS)
    other = tmp_path / 'other.txt'
    other.write_text(CORPUS.replace('Z', 'Y'), encoding='utf-8')
    moved = Dataset(f'text:8:{other}', 2, TRAIN, options=DataOptions(prefetch=False))
    with pytest.raises(DataError, match='vocabulary .* differs'):
        moved.load_state_dict(state)
    data.load_state_dict(state)


@pytest.mark.parametrize('source, message', [
    ('text', r'write text:T \(the embedded English text\)'),
    ('text:0', 'an integer in'),
    ('text:abc', 'context length'),
    ('text:8:missing.txt', 'missing.txt: cannot read the text'),
    ('text:4000:{file}', 'fewer than the 4001'),
    ('text:8:{binary}', r'binary.txt:2: not UTF-8 text \(byte 5'),
])
def test_bad_text_sources_name_what_is_wrong(tmp_path, text_file, source, message):
    binary = tmp_path / 'binary.txt'
    binary.write_bytes(b'ab\ncd\xff\xfe' + b'x' * 100)
    with pytest.raises(DataError, match=message):
        open_source(source.format(file=text_file, binary=binary), TRAIN,
                    DataOptions(root=str(tmp_path)))


def test_image_transforms_on_text_are_refused(text_file):
    param = proto.parse('scale: 0.5', schema.TransformationParameter)
    with pytest.raises(DataError, match='gives ids, not images'):
        Dataset(f'text:8:{text_file}', 2, TRAIN, param, DataOptions(prefetch=False))


def test_data_layer_tops_for_text(text_file):
    import layerasync
    net = layerasync.Net(proto.parse(f'''
        layer {{ name: "text" type: "Data" top: "ids" top: "next"
                 data_param {{ source: "text:12:{text_file}" batch_size: 5 }} }}''',
                                     schema.NetParameter), TRAIN)
    net.forward()
    assert net.blobs['ids'].shape == (5, 12) and net.blobs['next'].shape == (5, 12)
    np.testing.assert_array_equal(net.blobs['ids'].data[:, 1:], net.blobs['next'].data[:, :-1])
    net.close()
