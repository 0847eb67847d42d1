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


# The on-disk layout of an LMDB data file (data.mdb), as LMDB 0.9 (liblmdb's mdb.c)
# writes it on a 64-bit machine, in the machine's byte order. These are the facts the
# check below relies on:
# * pages 0 and 1 are meta pages; each starts with the 16-byte page header (8-byte page
#   number, 2-byte pad, 2-byte flags -- the meta flag is 0x08 --, 4 bytes of bounds),
#   followed by the meta record;
# * the meta record: 4-byte magic 0xBEEFC0DE, 4-byte format version (1), 8-byte map
#   address, 8-byte map size, then two 48-byte database records (free pages, main):
#   4-byte pad (of the free-page record: the page size), 2-byte flags, 2-byte depth,
#   five 8-byte counts/page numbers; then the 8-byte number of the last used page and
#   the 8-byte transaction id. So, from the start of the page: magic at 16, version
#   at 20, page size at 40, last page at 136, transaction id at 144;
# * LMDB reads meta page 0 at offset 0 and meta page 1 at offset <page size of meta
#   0>, uses the meta of the larger transaction id, and maps the file: every page up
#   to its last used page must be in the file, or reading it is a bus error (SIGBUS).
LMDB_MAGIC = 0xBEEFC0DE
LMDB_VERSION = 1
_META_FLAG = 0x08
_META_END = 152                     # page header + meta record, bytes
_PAGE_SIZES = (512, 65536)          # the page sizes accepted (powers of two)


def check_lmdb_file(path) -> dict:
    """Check an LMDB data file (``data.mdb``) against its meta pages before it is
    mapped; returns ``{"page_size", "last_page", "txnid", "size"}`` of the meta LMDB
    will use. A file too short for its two meta pages or for the last page they
    record, a wrong magic number, version or page size is a :class:`DataError` naming
    the file, what was found and what was expected."""
    import struct
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_META_END)
            metas = []
            for index in range(2):
                if index == 1:
                    f.seek(metas[0]["page_size"])
                    head = f.read(_META_END)
                offset = 0 if index == 0 else metas[0]["page_size"]
                if len(head) < _META_END:
                    raise DataError(
                        f"the LMDB data file '{path}' is truncated: it holds {size} bytes, "
                        f"meta page {index} needs {offset + _META_END}; expected two meta "
                        "pages at its start (a database copied or written only in part?)")
                order = _sys_order()
                flags, = struct.unpack_from(order + "H", head, 10)
                magic, version = struct.unpack_from(order + "II", head, 16)
                psize, = struct.unpack_from(order + "I", head, 40)
                last, txnid = struct.unpack_from(order + "QQ", head, 136)
                other = ">" if order == "<" else "<"
                if magic != LMDB_MAGIC and \
                        struct.unpack_from(other + "I", head, 16)[0] == LMDB_MAGIC:
                    raise DataError(
                        f"the LMDB data file '{path}' was written on a machine of the "
                        "other byte order; LMDB files are not portable between them")
                if magic != LMDB_MAGIC:
                    raise DataError(
                        f"'{path}' is not an LMDB data file: meta page {index} (at byte "
                        f"{offset}) has the magic number 0x{magic:08X}; expected "
                        f"0x{LMDB_MAGIC:08X}")
                if not flags & _META_FLAG:
                    raise DataError(f"the LMDB data file '{path}': page {index} has flags "
                                    f"0x{flags:04x}; expected a meta page (flag 0x08)")
                if version != LMDB_VERSION:
                    raise DataError(f"the LMDB data file '{path}' has format version "
                                    f"{version}; expected version {LMDB_VERSION}")
                if psize & (psize - 1) or not _PAGE_SIZES[0] <= psize <= _PAGE_SIZES[1]:
                    raise DataError(
                        f"the LMDB data file '{path}' records a page size of {psize} bytes "
                        f"in meta page {index}; expected a power of two from "
                        f"{_PAGE_SIZES[0]} to {_PAGE_SIZES[1]}")
                metas.append({"page_size": psize, "last_page": last, "txnid": txnid,
                              "size": size})
    except FileNotFoundError:
        raise DataError(f"no LMDB data file at '{path}'") from None
    except OSError as e:
        raise DataError(f"cannot read the LMDB data file '{path}': {e.strerror or e}") \
            from None
    meta = max(metas, key=lambda m: m["txnid"])
    psize = metas[0]["page_size"]
    if meta["page_size"] != psize:
        raise DataError(f"the LMDB data file '{path}': its meta pages record page sizes "
                        f"{psize} and {metas[1]['page_size']}; expected one page size")
    need = (meta["last_page"] + 1) * psize
    if need > size:
        raise DataError(
            f"the LMDB data file '{path}' is truncated: it holds {size} bytes, but its "
            f"meta page records pages up to number {meta['last_page']} of {psize} bytes, "
            f"so it needs {need} bytes (a database copied or written only in part?)")
    return meta


def _sys_order() -> str:
    import sys
    return "<" if sys.byteorder == "little" else ">"


# HDF5 (the HDF5 File Format Specification): the superblock starts with the 8-byte
# signature 89 'HDF' 0d 0a 1a 0a at byte 0, 512, 1024, 2048, ... (after a user block).
# Byte 8 is the superblock version. Versions 0 and 1: the size of file addresses
# ("offsets") is byte 13; the base address follows at byte 24 (version 0) or 28
# (version 1, which adds 4 bytes), then the free-space address, then the end-of-file
# address. Versions 2 and 3: the size of offsets is byte 9, the base address at byte
# 12, then the superblock extension address, then the end-of-file address. All
# little-endian; an address of all 1 bits is undefined. The HDF5 library itself calls
# a file truncated when it is shorter than the stored end-of-file address.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_hdf5_file(path) -> dict:
    """Check an HDF5 file's superblock before the HDF5 library opens it; returns
    ``{"superblock", "version", "eof", "size"}``. No signature, an unknown superblock
    version or a file shorter than its recorded end of file is a :class:`DataError`
    naming the file, what was found and what was expected."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            where = 0
            while True:
                f.seek(where)
                head = f.read(64)
                if head[:8] == HDF5_SIGNATURE:
                    break
                where = 512 if where == 0 else where * 2
                if where + 8 > size:
                    raise DataError(
                        f"'{path}' is not an HDF5 file: no HDF5 signature (89 48 44 46 0d "
                        f"0a 1a 0a) at byte 0, 512, 1024, ... of its {size} bytes")
    except FileNotFoundError:
        raise DataError(f"no HDF5 file at '{path}'") from None
    except OSError as e:
        raise DataError(f"cannot read the HDF5 file '{path}': {e.strerror or e}") from None
    import struct
    version = head[8] if len(head) > 8 else None
    if version in (0, 1):
        width, at = (head[13] if len(head) > 13 else 0), (24 if version == 0 else 28)
    elif version in (2, 3):
        width, at = (head[9] if len(head) > 9 else 0), 12
    else:
        raise DataError(f"the HDF5 file '{path}' has superblock version {version} (at "
                        f"byte {where}); expected version 0 to 3 (is the file truncated "
                        "or newer than the HDF5 format symnet knows?)")
    formats = {2: "<H", 4: "<I", 8: "<Q"}
    end = at + 3 * width
    if width not in formats:
        raise DataError(f"the HDF5 file '{path}' is damaged: its superblock (at byte "
                        f"{where}) gives file addresses of {width} bytes; expected 2, 4 "
                        "or 8")
    if len(head) < end:
        raise DataError(f"the HDF5 file '{path}' is truncated: its superblock at byte "
                        f"{where} ends after {len(head)} bytes; expected at least {end}")
    eof, = struct.unpack_from(formats[width], head, at + 2 * width)
    if eof != (1 << (8 * width)) - 1 and eof > size:
        raise DataError(f"the HDF5 file '{path}' is truncated: it holds {size} bytes, its "
                        f"superblock records an end of file at byte {eof} (a file copied "
                        "or written only in part?)")
    return {"superblock": where, "version": version, "eof": eof, "size": size}


_READERS = {}              # realpath -> [environment, users]
_READERS_LOCK = threading.Lock()


def _open_reader(path):
    lmdb = _lmdb()
    if not os.path.exists(path):
        raise DataError(f"no LMDB database at '{path}'")
    if looks_like_leveldb(path):
        raise DataError(f"'{path}' is a LevelDB database; symnet reads LMDB only "
                        "(convert it, e.g. with convert_imageset, to LMDB)")
    subdir = os.path.isdir(path)
    check_lmdb_file(os.path.join(path, "data.mdb") if subdir else path)
    try:
        return lmdb.open(path, subdir=subdir, readonly=True, lock=False,
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
