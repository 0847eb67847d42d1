#!/usr/bin/env python
"""Make MNIST-like databases from scikit-learn's bundled handwritten digits.

scikit-learn ships 1797 8x8 digit images (values 0..16). Each is scaled to 0..255,
upsampled with a bilinear filter to 20x20 and centred in a 28x28 frame (as MNIST centres
its 20x20 digits), then split deterministically (a fixed permutation) into 1497 training
and 300 test images (three test batches of 100, as in Caffe's lenet_train_test.prototxt).
Written as Caffe reads them:

* ``digits_train_lmdb`` / ``digits_test_lmdb``: LMDBs of Datum messages (1 x 28 x 28
  uint8, label 0..9), keys ``%08d`` -- for a Data layer with ``backend: LMDB`` and
  ``transform_param { scale: 0.00390625 }``, as in Caffe's lenet_train_test.prototxt;
* with ``--hdf5``: ``digits_train.h5`` / ``digits_test.h5`` (datasets ``data``, float32
  N x 1 x 28 x 28 already scaled to [0, 1), and ``label``, float32 N) and the list files
  ``digits_train_h5.txt`` / ``digits_test_h5.txt`` for HDF5Data layers.

    python examples/mnist/make_digits_db.py [--out DIR] [--hdf5] [--force]

Needs scikit-learn, Pillow, lmdb (and h5py for --hdf5). The output is the same on every
run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

N_TRAIN = 1497          # 300 test images: Caffe's test batch of 100, test_iter: 3
SEED = 0


def digits_28x28():
    """(images uint8 (N, 1, 28, 28), labels int (N,)) in scikit-learn's order."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.zeros((len(digits.images), 1, 28, 28), dtype=np.uint8)
    for i, im in enumerate(digits.images):
        small = np.clip(np.rint(im * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        big = Image.fromarray(small, "L").resize((20, 20), Image.BILINEAR)
        images[i, 0, 4:24, 4:24] = np.asarray(big)
    return images, digits.target.astype(np.int64)


def split(images, labels):
    order = np.random.default_rng(SEED).permutation(len(images))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    return (images[train], labels[train]), (images[test], labels[test])


def write_lmdb(path, images, labels):
    from symnet.data.formats import LMDBWriter, array_to_datum
    with LMDBWriter(path) as db:
        for i, (image, label) in enumerate(zip(images, labels)):
            db.put(f"{i:08d}", array_to_datum(image, int(label)).SerializeToString())


def write_hdf5(out, name, images, labels):
    import h5py
    h5 = os.path.join(out, f"{name}.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("data", data=images.astype(np.float32) * np.float32(1 / 256))
        f.create_dataset("label", data=labels.astype(np.float32))
    with open(os.path.join(out, f"{name}_h5.txt"), "w") as f:
        f.write(f"{name}.h5\n")     # relative to the list file's folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="output folder (default: this script's folder)")
    ap.add_argument("--hdf5", action="store_true", help="also write HDF5 files")
    ap.add_argument("--force", action="store_true", help="replace existing databases")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    images, labels = digits_28x28()
    parts = dict(zip(("digits_train", "digits_test"), split(images, labels)))
    for name, (x, y) in parts.items():
        db = os.path.join(args.out, f"{name}_lmdb")
        if os.path.exists(db):
            if not args.force:
                print(f"{db} exists; use --force to replace it", file=sys.stderr)
                return 1
            shutil.rmtree(db)
        write_lmdb(db, x, y)
        if args.hdf5:
            write_hdf5(args.out, name, x, y)
        print(f"{name}: {len(x)} images 1x28x28 -> {db}" +
              (f" and {name}.h5" if args.hdf5 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
