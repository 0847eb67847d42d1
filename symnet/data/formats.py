"""Reading and writing what Caffe's data layers read: images (Pillow), Caffe ``Datum``
messages and LMDB databases (the ``lmdb`` package).

Images are (C, H, W) uint8 arrays with colour channels in Caffe's order, BGR (Caffe
reads images with OpenCV), so mean files and mean values made for Caffe apply. Resizing
uses Pillow's bilinear filter (Caffe: OpenCV's bilinear ``cv::resize``; pixels may differ
by a few levels on downscaling).
"""
from __future__ import annotations

import io
import os
import threading

import numpy as np

from .base import DataError

DATA_EXTRA_HINT = "pip install 'symnet[data]'"


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"reading images needs Pillow: {DATA_EXTRA_HINT}") from None
    return Image


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise ImportError(f"LMDB databases need the lmdb package: {DATA_EXTRA_HINT}") from None
    return lmdb


def _datum_type():
    from ..formats.proto import caffe_pb2
    return caffe_pb2.Datum


# ----------------------------------------------------------------------------- images

def pil_to_array(im, color=True) -> np.ndarray:
    """A Pillow image as (C, H, W): ``color`` True gives 3 channels (BGR), False 1 (gray),
    None keeps what the image holds (gray 1, colour 3 BGR, with alpha 4 BGRA; 16-bit and
    float images as float32)."""
    if color is True:
        a = np.asarray(im.convert("RGB"))[..., ::-1]
    elif color is False:
        a = np.asarray(im.convert("L"))[..., None]
    else:
        mode = im.mode
        if mode in ("1", "L"):
            a = np.asarray(im.convert("L"))[..., None]
        elif mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            a = np.asarray(im.convert("F"), dtype=np.float32)[..., None]
        elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
            a = np.asarray(im.convert("RGBA"))[..., [2, 1, 0, 3]]
        else:
            a = np.asarray(im.convert("RGB"))[..., ::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _open_resized(im, height, width):
    if bool(height) != bool(width):
        raise DataError("give both the new height and the new width, or neither")
    if height and width and (im.height, im.width) != (height, width):
        im = im.resize((int(width), int(height)), _pil().BILINEAR)
    return im


def read_image(path, color=True, height=0, width=0) -> np.ndarray:
    """An image file as (C, H, W) uint8 (BGR when in colour), resized when ``height``
    and ``width`` are given."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            im.load()
            im = _open_resized(im if color is None else im.convert("RGB" if color else "L"),
                               height, width)
            return pil_to_array(im, color)
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read the image '{path}': {e}") from None


def decode_image(data: bytes, color=None, height=0, width=0, what="encoded image"):
    """Encoded image bytes (PNG, JPEG, ...) as (C, H, W), see :func:`pil_to_array`."""
    Image = _pil()
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()
            return pil_to_array(_open_resized(im, height, width), color)
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot decode the {what}: {e}") from None


def encode_image(chw, fmt="png") -> bytes:
    """A (C, H, W) uint8 image (BGR / gray) encoded as PNG or JPEG bytes."""
    Image = _pil()
    a = np.asarray(chw)
    if a.dtype != np.uint8:
        raise DataError(f"only uint8 images can be encoded, not {a.dtype}")
    if a.shape[0] == 1:
        im = Image.fromarray(a[0], "L")
    elif a.shape[0] == 3:
        im = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)[..., ::-1]), "RGB")
    elif a.shape[0] == 4:
        im = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)[..., [2, 1, 0, 3]]),
                             "RGBA")
    else:
        raise DataError(f"cannot encode a {a.shape[0]}-channel image")
    fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt.lower().lstrip("."), fmt.upper().lstrip("."))
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, fmt, quality=95)
    else:
        im.save(buf, fmt)
    return buf.getvalue()


# ----------------------------------------------------------------------------- Datum

def array_to_datum(chw, label=0, *, encoded: bytes | None = None):
    """A Datum: uint8 (C, H, W) as raw ``data``, other dtypes as ``float_data``; or, with
    ``encoded``, the encoded image bytes (``encoded: true``; Caffe then leaves channels,
    height and width unset)."""
    datum = _datum_type()()
    datum.label = int(label)
    if encoded is not None:
        datum.data = bytes(encoded)
        datum.encoded = True
        return datum
    a = np.asarray(chw)
    if a.ndim != 3:
        raise DataError(f"a Datum holds a (C, H, W) array, not shape {list(a.shape)}")
    datum.channels, datum.height, datum.width = (int(d) for d in a.shape)
    if a.dtype == np.uint8:
        datum.data = np.ascontiguousarray(a).tobytes()
    else:
        datum.float_data.extend(np.asarray(a, dtype=np.float32).ravel().tolist())
    return datum


def datum_to_array(datum, color=None, what="Datum") -> np.ndarray:
    """A Datum's image as (C, H, W): uint8 for raw bytes and encoded images, float32 for
    ``float_data``. ``color`` applies to encoded images (see :func:`pil_to_array`)."""
    if datum.encoded:
        return decode_image(datum.data, color, what=f"image of {what}")
    shape = (datum.channels, datum.height, datum.width)
    count = int(np.prod(shape))
    if len(datum.data):
        if len(datum.data) != count:
            raise DataError(f"{what} has {len(datum.data)} bytes of data for channels x "
                            f"height x width = {shape[0]} x {shape[1]} x {shape[2]}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise DataError(f"{what} has {len(datum.float_data)} float_data values for channels "
                        f"x height x width = {shape[0]} x {shape[1]} x {shape[2]}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def parse_datum(value: bytes, what="Datum"):
    datum = _datum_type()()
    try:
        datum.ParseFromString(value)
    except Exception as e:   # DecodeError and friends
        raise DataError(f"{what} is not a Caffe Datum message ({e})") from None
    return datum


# ----------------------------------------------------------------------------- LMDB

def looks_like_leveldb(path) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "CURRENT")) and \
        not os.path.exists(os.path.join(path, "data.mdb"))


_READERS = {}              # realpath -> [environment, users]
_READERS_LOCK = threading.Lock()


def _open_reader(path):
    lmdb = _lmdb()
    if not os.path.exists(path):
        raise DataError(f"no LMDB database at '{path}'")
    if looks_like_leveldb(path):
        raise DataError(f"'{path}' is a LevelDB database; symnet reads LMDB only "
                        "(convert it, e.g. with convert_imageset, to LMDB)")
    try:
        return lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False,
                         readahead=False, meminit=False, max_readers=126)
    except lmdb.Error as e:
        raise DataError(f"cannot open the LMDB database '{path}': {e}") from None


def acquire_lmdb(path):
    """A read-only LMDB environment shared by every reader of ``path`` in this process
    (an environment can be open only once per process); give it back with
    :func:`release_lmdb`. Caffe's layout (a folder holding data.mdb) or a single file."""
    key = os.path.realpath(os.fspath(path))
    with _READERS_LOCK:
        entry = _READERS.get(key)
        if entry is None:
            entry = _READERS[key] = [_open_reader(os.fspath(path)), 0]
        entry[1] += 1
        return entry[0]


def release_lmdb(env):
    with _READERS_LOCK:
        for key, entry in list(_READERS.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _READERS[key]
                    env.close()
                return


def open_lmdb(path, *, readonly=True, map_size=1 << 26):
    """A new LMDB environment; read-only ones come from :func:`acquire_lmdb`."""
    lmdb = _lmdb()
    path = os.fspath(path)
    if readonly:
        return acquire_lmdb(path)
    if os.path.realpath(path) in _READERS:
        raise DataError(f"the LMDB database '{path}' is open for reading in this process")
    os.makedirs(path, exist_ok=True)
    return lmdb.open(path, subdir=True, map_size=map_size, meminit=False, map_async=False)


class LMDBWriter:
    """Writes key/value pairs to a new LMDB (Caffe's layout: a folder), committing every
    ``commit_every`` records and growing the map as needed::

        with LMDBWriter(path) as db:
            db.put(b"00000000_a.png", datum.SerializeToString())
    """

    def __init__(self, path, commit_every=1000):
        self.path = os.fspath(path)
        if os.path.exists(os.path.join(self.path, "data.mdb")):
            raise DataError(f"an LMDB database already exists at '{self.path}'; remove it "
                            "first")
        self.env = open_lmdb(self.path, readonly=False)
        self.commit_every = int(commit_every)
        self._pending = []
        self.count = 0

    def put(self, key, value):
        key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        self._pending.append((key, bytes(value)))
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self):
        lmdb = _lmdb()
        while self._pending:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
                continue
            self.count += len(self._pending)
            self._pending = []

    def close(self):
        if self.env is not None:
            self.commit()
            self.env.sync()
            self.env.close()
            self.env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_lmdb(path):
    """(key, value) pairs of an LMDB in key order."""
    env = acquire_lmdb(path)
    try:
        with env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                yield key, value
    finally:
        release_lmdb(env)
