"""Caffe's data tools: ``convert_imageset`` (images to an LMDB of Datum) and
``compute_image_mean`` (the mean image of such a database, as a .binaryproto).

The ``symnet convert-imageset`` and ``symnet compute-image-mean`` commands call these.
"""
from __future__ import annotations

import os

import numpy as np

from .base import DataError
from .builtin import read_image_list
from .formats import (LMDBWriter, array_to_datum, datum_to_array, encode_image, iter_lmdb,
                      parse_datum, read_image)

_EXT_FORMAT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".bmp": "bmp", ".gif": "gif",
               ".tif": "tiff", ".tiff": "tiff", ".ppm": "ppm", ".pgm": "ppm"}


def convert_imageset(list_file, root, db_path, resize_height=0, resize_width=0,
                     shuffle=False, gray=False, encoded=False, encode_type="", seed=0,
                     progress=None) -> int:
    """Write the images of ``list_file`` (``path label`` lines; paths relative to
    ``root``) into a new LMDB at ``db_path`` as Caffe's convert_imageset does: keys
    ``%08d_<path>`` in list order (shuffled with ``seed`` when ``shuffle``), values Datum
    messages with the label. Raw Datums hold (C, H, W) uint8 bytes, BGR (gray with
    ``gray``), resized to resize_height x resize_width when both are given. With
    ``encoded`` the Datum holds the image file's bytes as they are (when no resize or
    colour change is needed and ``encode_type`` is empty or the file's own format), else
    the image re-encoded as ``encode_type`` (or the file's format). ``progress`` is called
    with (done, total). Returns the number of images written."""
    if bool(resize_height) != bool(resize_width):
        raise DataError("convert_imageset: give resize_height and resize_width together")
    entries = read_image_list(os.fspath(list_file))
    if shuffle:
        order = np.random.default_rng(int(seed)).permutation(len(entries))
        entries = [entries[i] for i in order]
    color = not gray
    with LMDBWriter(db_path) as db:
        for i, (name, label) in enumerate(entries):
            path = os.path.join(os.fspath(root), name) if root else name
            if encoded:
                datum = _encoded_datum(path, label, color, resize_height, resize_width,
                                       encode_type)
            else:
                datum = array_to_datum(read_image(path, color, resize_height, resize_width),
                                       label)
            db.put(f"{i:08d}_{name}", datum.SerializeToString())
            if progress is not None:
                progress(i + 1, len(entries))
    return db.count


def _encoded_datum(path, label, color, height, width, encode_type):
    from PIL import Image
    ext = os.path.splitext(path)[1].lower()
    fmt = (encode_type or _EXT_FORMAT.get(ext, "png")).lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    try:
        with Image.open(path) as im:
            native_color = im.mode not in ("1", "L", "I", "I;16", "F")
            same_size = not height or (im.height, im.width) == (height, width)
    except OSError as e:
        raise DataError(f"cannot read the image '{path}': {e}") from None
    if same_size and native_color == color and _EXT_FORMAT.get(ext) == fmt:
        with open(path, "rb") as f:
            return array_to_datum(None, label, encoded=f.read())
    image = read_image(path, color, height, width)
    return array_to_datum(None, label, encoded=encode_image(image, fmt))


def compute_image_mean(db_path, mean_path=None, progress=None) -> np.ndarray:
    """The mean image (float32, shape (1, C, H, W)) of an LMDB of Datum (raw or encoded
    images, all of one size), written to ``mean_path`` as a .binaryproto with Caffe's
    4-D num/channels/height/width fields, as Caffe's compute_image_mean does."""
    from ..formats import prototxt
    total, count, shape = None, 0, None
    for key, value in iter_lmdb(os.fspath(db_path)):
        what = f"record '{key.decode('utf-8', 'replace')}' of '{db_path}'"
        image = datum_to_array(parse_datum(value, what), None, what)
        if total is None:
            shape, total = image.shape, np.zeros(image.shape, dtype=np.float64)
        elif image.shape != shape:
            raise DataError(f"compute_image_mean: {what} has shape {list(image.shape)}, the "
                            f"first record {list(shape)}; the images must have one size")
        total += image
        count += 1
        if progress is not None:
            progress(count, None)
    if not count:
        raise DataError(f"compute_image_mean: the database '{db_path}' is empty")
    mean = (total / count).astype(np.float32)[None]
    if mean_path is not None:
        prototxt.write_blobproto(mean, mean_path, legacy=True)
    return mean
