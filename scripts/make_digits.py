"""Convert scikit-learn's copy of the UCI digits into layerasync/data/digits.npz.

Run once, from the repository root, with scikit-learn installed in a scratch
environment (the package itself never imports scikit-learn)::

    python3 -m venv skl-venv && skl-venv/bin/pip install scikit-learn
    skl-venv/bin/python scripts/make_digits.py

The source is the "Optical Recognition of Handwritten Digits" data set of the
UCI Machine Learning Repository (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0;
https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits),
as shipped by ``sklearn.datasets.load_digits``: 1,797 images of 8x8 pixels with
values 0..16 and labels 0..9. The output holds uint8 arrays ``train_images``
(1437, 1, 8, 8), ``train_labels`` (1437,), ``test_images`` (360, 1, 8, 8) and
``test_labels`` (360,): a stratified split with a fixed seed, each part kept in
the original file order. The same command always writes the same arrays.
"""
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TEST_SIZE = 360
SEED = 0
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'layerasync', 'data',
                   'digits.npz')


def main():
    digits = load_digits()
    images = digits.images.astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.uint8)
    assert np.array_equal(images.reshape(len(images), -1), digits.data), 'pixels are not integers'
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_SIZE,
                                   stratify=labels, random_state=SEED)
    train, test = np.sort(train), np.sort(test)
    np.savez_compressed(OUT, train_images=images[train], train_labels=labels[train],
                        test_images=images[test], test_labels=labels[test])
    print(f'wrote {os.path.normpath(OUT)}: {len(train)} train, {len(test)} test, '
          f'{os.path.getsize(OUT)} bytes')


if __name__ == '__main__':
    main()
