"""pycaffe's ``caffe.io`` helpers for blobs and images."""
from __future__ import annotations

import numpy as np

from . import prototxt
from .proto import caffe_pb2


def blobproto_to_array(blob, return_diff=False):
    """A BlobProto's data (or diff) as an array of its shape."""
    if return_diff:
        diff = caffe_pb2.BlobProto()
        diff.CopyFrom(blob)
        del diff.data[:]
        del diff.double_data[:]
        diff.data.extend(blob.diff)
        diff.double_data.extend(blob.double_diff)
        return prototxt.blob_to_array(diff)
    return prototxt.blob_to_array(blob)


def array_to_blobproto(arr, diff=None):
    blob = prototxt.array_to_blob(np.asarray(arr, dtype=np.float32))
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return blob


def array_to_datum(arr, label=None):
    """A (C, H, W) array as a Datum: uint8 arrays as raw bytes, others as floats."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"array_to_datum: expected a (C, H, W) array, got shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data, dtype=np.float32).reshape(shape)


def load_image(filename, color=True):
    """An image as float32 (H, W, C) in [0, 1] (Pillow is needed: pip install Pillow)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("caffe.io.load_image needs Pillow: pip install Pillow") from e
    with Image.open(filename) as im:
        im = im.convert("RGB" if color else "L")
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr if color else arr[:, :, None]
