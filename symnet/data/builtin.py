"""Caffe's data layers as sources: DummyData, MemoryData, HDF5Data, Data (LMDB) and
ImageData. (Input layers are graph inputs of the Net, not sources.)

Every source returns fresh float32 arrays from ``next_batch`` and keeps a position
(``state()`` / ``set_state()``, see :mod:`symnet.data.base`).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from . import register
from .base import DataError, Source, has_any_field, message_dict, resolve_path, search_bases
from .formats import (DATA_EXTRA_HINT, acquire_lmdb, check_hdf5_file, datum_to_array,
                      looks_like_leveldb, parse_datum, read_image, release_lmdb)
from .transform import Transformer


def _transformer(lp, phase, base_dir):
    return Transformer(lp.transform_param if lp.HasField("transform_param") else None,
                       phase, base_dir)


def _batch_size(value, what):
    if int(value) <= 0:
        raise DataError(f"{what} must be positive (got {value})")
    return int(value)


# ----------------------------------------------------------------------------- DummyData

class DummyDataSource(Source):
    """Tops filled by Caffe fillers, as Caffe's DummyDataLayer: a top whose filler is
    ``constant`` (the default) is filled once, when the net is built, and never again
    (:meth:`constant_tops`), so values written into it from Python stay; the others
    are filled anew every batch (from the source's stream generator).

    Sharded (``world`` of N > 1 ranks): nothing is read, so nothing is shared out; the
    random tops of each rank come from its own stream generator (different values on
    each rank), the constant tops are alike on every rank."""

    type_name = "DummyData"

    def __init__(self, shapes, filler_specs, name="data", phase="TRAIN", seed=None,
                 world=None):
        from .. import fillers
        super().__init__(name, phase, seed, world)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.fillers = []
        for spec in filler_specs:
            try:
                self.fillers.append(fillers.get(spec))
            except ValueError as e:
                raise DataError(f"dummy_data_param.data_filler: {e}") from None
        self._constant = [None] * len(self.shapes)
        for i, (shape, f) in enumerate(zip(self.shapes, self.fillers)):
            if isinstance(f, fillers.ConstantFiller):
                self._constant[i] = f(shape, np.random.default_rng(0))

    def top_shapes(self):
        return list(self.shapes)

    def constant_tops(self):
        return {i: c.copy() for i, c in enumerate(self._constant) if c is not None}

    def next_batch(self):
        return [c.copy() if c is not None else f(s, self.rng)
                for s, f, c in zip(self.shapes, self.fillers, self._constant)]


@register("DummyData")
def _dummy_data(lp, phase, base_dir, seed=None, world=None):
    p = lp.dummy_data_param
    n = len(lp.top)
    legacy = any(len(getattr(p, f)) for f in ("num", "channels", "height", "width"))
    if legacy:
        if len(p.shape):
            raise DataError("dummy_data_param: give shape or num/channels/height/width, "
                            "not both")
        dims = []
        for f in ("num", "channels", "height", "width"):
            values = list(getattr(p, f))
            if len(values) not in (1, n):
                raise DataError(f"dummy_data_param: {len(values)} {f} value(s) for {n} tops; "
                                "give one, or one per top")
            dims.append(values * n if len(values) == 1 else values)
        shapes = [tuple(d[i] for d in dims) for i in range(n)]
    else:
        if len(p.shape) not in (1, n):
            raise DataError(f"dummy_data_param: {len(p.shape)} shape(s) for {n} tops; give "
                            "one, or one per top")
        shapes = [tuple(s.dim) for s in p.shape]
        shapes = shapes * n if len(shapes) == 1 else shapes
    specs = [message_dict(f) for f in p.data_filler]
    if len(specs) not in (0, 1, n):
        raise DataError(f"dummy_data_param: {len(specs)} data_filler(s) for {n} tops; give "
                        "none (constant 0), one, or one per top")
    specs = [None] * n if not specs else specs * n if len(specs) == 1 else specs
    return DummyDataSource(shapes, specs, lp.name, phase, seed, world)


# ----------------------------------------------------------------------------- MemoryData

class MemoryDataSource(Source):
    """Batches cut in order from arrays given with ``set_arrays(data, labels)`` (pycaffe's
    ``net.set_input_arrays``), wrapping around; tops data (N, C, H, W) and label (N,).
    As Caffe's MemoryDataLayer::Reset, the arrays are not transformed.

    Sharded (rank r of N): every rank is given the same arrays and reads the items r,
    r+N, r+2N, ... of their endless repetition, so the N ranks together read the batch
    of N*batch items one process would. The position is the next item this rank reads
    (``cursor``) and how often it wrapped around (``epoch``)."""

    type_name = "MemoryData"

    def __init__(self, batch_size, channels, height, width, n_tops=2, name="data",
                 phase="TRAIN", seed=None, world=None):
        super().__init__(name, phase, seed, world)
        self.batch_size = batch_size
        self.item_shape = (int(channels), int(height), int(width))
        if min(self.item_shape) <= 0:
            raise DataError(f"memory_data_param: channels, height and width must be "
                            f"positive (got {list(self.item_shape)})")
        self.n_tops = n_tops
        self.data = self.labels = None
        self._rewind()

    def _rewind(self):
        self.epoch, self.cursor = 0, self.world.rank
        if self.data is not None:
            self.epoch, self.cursor = divmod(self.world.rank, self.data.shape[0])

    def top_shapes(self):
        shapes = [(self.batch_size,) + self.item_shape, (self.batch_size,)]
        return shapes[:max(1, min(self.n_tops, 2))]

    def set_arrays(self, data, labels):
        """Use ``data`` (n, C, H, W) and ``labels`` (n values) from the start; ``n`` must
        be a multiple of the batch size. Both are copied as float32."""
        data = np.array(data, dtype=np.float32, order="C", copy=True)
        labels = np.array(labels, dtype=np.float32, copy=True)
        if data.ndim != 4 or data.shape[1:] != self.item_shape:
            raise DataError(f"MemoryData '{self.name}': data must have shape (n, "
                            f"{', '.join(map(str, self.item_shape))}), got {list(data.shape)}")
        n = data.shape[0]
        if labels.size != n:
            raise DataError(f"MemoryData '{self.name}': {labels.size} labels for {n} "
                            "data items")
        if n == 0 or n % self.batch_size:
            raise DataError(f"MemoryData '{self.name}': the number of items ({n}) must be a "
                            f"positive multiple of the batch size ({self.batch_size})")
        self.data, self.labels = data, labels.reshape(n)
        self._rewind()

    def next_batch(self):
        if self.data is None:
            raise DataError(f"MemoryData '{self.name}' has no arrays: call "
                            "net.set_input_arrays(data, labels) before forward")
        b, s, n, step = self.batch_size, self.cursor, self.data.shape[0], self.world.size
        if step == 1:
            out = [self.data[s:s + b].copy(), self.labels[s:s + b].copy()]
        else:
            rows = (s + step * np.arange(b)) % n
            out = [self.data[rows], self.labels[rows]]
        wraps, self.cursor = divmod(s + step * b, n)
        self.epoch += wraps
        return out[:len(self.top_shapes())]

    def _position(self):
        return {"epoch": self.epoch, "cursor": self.cursor}

    def _set_position(self, state):
        cursor = int(state["cursor"])
        if cursor < 0 or self.data is not None and cursor >= self.data.shape[0]:
            raise DataError(f"MemoryData '{self.name}': saved cursor {cursor} is beyond the "
                            f"{self.data.shape[0]} items set")
        self.epoch, self.cursor = int(state["epoch"]), cursor


@register("MemoryData")
def _memory_data(lp, phase, base_dir, seed=None, world=None):
    p = lp.memory_data_param
    if lp.HasField("transform_param") and has_any_field(lp.transform_param):
        warnings.warn(f"MemoryData '{lp.name}': transform_param is not applied to arrays "
                      "given with set_input_arrays (as in Caffe)", stacklevel=2)
    return MemoryDataSource(_batch_size(p.batch_size, "memory_data_param.batch_size"),
                            p.channels, p.height, p.width, len(lp.top), lp.name, phase, seed,
                            world)


# ----------------------------------------------------------------------------- HDF5Data

def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError(f"HDF5Data needs h5py: {DATA_EXTRA_HINT}") from None
    return h5py


def read_list(path, what):
    """The non-blank lines of a list file as [(line number, stripped line)]; the file
    is read up to the text size limit (``SYMNET_MAX_TEXT_BYTES``, see
    :func:`symnet.formats.prototxt.read_limited`) and must be UTF-8."""
    from ..formats.prototxt import read_limited
    data = read_limited(path, what=what.replace("the ", "", 1), error=DataError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{what} '{path}', line {line}: found the byte "
                        f"0x{data[e.start]:02x}, which is not valid UTF-8; expected "
                        "UTF-8 text") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(i + 1, line.strip()) for i, line in enumerate(lines) if line.strip()]


class HDF5DataSource(Source):
    """Rows of the datasets named like the tops, from a list of .h5 files (one file in
    memory at a time, as Caffe). With ``shuffle`` the file order and the rows of each
    file are permuted anew every epoch.

    The record stream is, epoch after epoch, the rows of the files in file order (each
    file's rows in their order), both orders permuted with ``shuffle`` from the seed
    alone: the same on every rank. Sharded (rank r of N), the source reads the rows at
    places r, r+N, r+2N, ... of that stream, crossing files and epochs as one process
    would (Caffe's HDF5DataLayer::Skip); a file that holds none of the rank's rows is
    still read, to learn its number of rows."""

    type_name = "HDF5Data"

    def __init__(self, files, tops, batch_size, shuffle=False, name="data", phase="TRAIN",
                 seed=None, world=None):
        super().__init__(name, phase, seed, world)
        if not files:
            raise DataError("hdf5_data_param.source lists no files")
        if not tops:
            raise DataError("HDF5Data needs tops, named like the datasets to read")
        self.files, self.tops = list(files), list(tops)
        self.batch_size, self.shuffle = batch_size, bool(shuffle)
        arrays = self._read(0)
        self.item_shapes = [a.shape[1:] for a in arrays]
        self._loaded = None
        self._rewind()

    def _read(self, index):
        h5py = _h5py()
        path = self.files[index]
        try:
            check_hdf5_file(path)
        except DataError as e:
            raise DataError(f"HDF5Data '{self.name}': {e}") from None
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"HDF5Data '{self.name}': the HDF5 library cannot open the "
                            f"file '{path}': {e}") from None
        with f:
            arrays = []
            for t in self.tops:
                ds = f.get(t)
                if ds is None or not isinstance(ds, h5py.Dataset):
                    have = ", ".join(sorted(f.keys())) or "none"
                    raise DataError(f"HDF5 file '{path}' has no dataset '{t}' for top '{t}' "
                                    f"(datasets: {have})")
                if ds.ndim < 1:
                    raise DataError(f"HDF5 dataset '{t}' in '{path}' is a scalar; expected "
                                    "rows")
                arrays.append(np.asarray(ds[()], dtype=np.float32))
        rows = {a.shape[0] for a in arrays}
        if len(rows) != 1:
            sizes = ", ".join(f"{t}: {a.shape[0]}" for t, a in zip(self.tops, arrays))
            raise DataError(f"HDF5 file '{path}': the datasets have different numbers of "
                            f"rows ({sizes})")
        if rows == {0}:
            raise DataError(f"HDF5 file '{path}' has no rows")
        if hasattr(self, "item_shapes"):
            for t, a, s in zip(self.tops, arrays, self.item_shapes):
                if a.shape[1:] != s:
                    raise DataError(f"HDF5 dataset '{t}' in '{path}' has rows of shape "
                                    f"{list(a.shape[1:])}, the first file {list(s)}")
        return arrays

    def top_shapes(self):
        return [(self.batch_size,) + tuple(s) for s in self.item_shapes]

    def _file_order(self, epoch):
        n = len(self.files)
        return self.epoch_rng(epoch).permutation(n) if self.shuffle and n > 1 else np.arange(n)

    def _current(self):
        key = (self.seed, self.epoch, self.slot)
        if self._loaded is None or self._loaded[0] != key:
            index = int(self._file_order(self.epoch)[self.slot])
            if self._loaded is not None and self._loaded[1] == index:
                arrays = self._loaded[2]
            else:
                arrays = self._read(index)
            rows = arrays[0].shape[0]
            order = (self.epoch_rng(self.epoch, self.slot + 1).permutation(rows)
                     if self.shuffle else np.arange(rows))
            self._loaded = (key, index, arrays, order)
        return self._loaded[2], self._loaded[3]

    def next_batch(self):
        out = [np.empty(s, dtype=np.float32) for s in self.top_shapes()]
        step, i = self.world.size, 0
        while i < self.batch_size:
            arrays, order = self._current()
            k = min(self.batch_size - i, -(-(len(order) - self.row) // step))
            rows = order[self.row:self.row + (k - 1) * step + 1:step]
            for o, a in zip(out, arrays):
                o[i:i + k] = a[rows]
            i += k
            self.row += k * step
            self._settle()
        return out

    def _settle(self):
        """Carry a row beyond the current file into the files (and epochs) after it.
        A row that lands on the start of a file does not read that file yet."""
        while self.row > 0:
            rows = len(self._current()[1])
            if self.row < rows:
                return
            self.row -= rows
            self.slot += 1
            if self.slot == len(self.files):
                self.slot, self.epoch = 0, self.epoch + 1

    def _rewind(self):
        self.epoch, self.slot, self.row = 0, 0, self.world.rank
        self._settle()

    def _position(self):
        return {"epoch": self.epoch, "file": self.slot, "row": self.row}

    def _set_position(self, state):
        epoch, slot, row = int(state["epoch"]), int(state["file"]), int(state["row"])
        if epoch < 0 or not 0 <= slot < len(self.files) or row < 0:
            raise DataError(f"HDF5Data '{self.name}': saved position epoch {epoch}, file "
                            f"{slot}, row {row} is outside the {len(self.files)} files")
        self.epoch, self.slot, self.row = epoch, slot, row
        rows = len(self._current()[1])
        if row >= rows:
            raise DataError(f"HDF5Data '{self.name}': saved row {row} is beyond the {rows} "
                            f"rows of file {slot}")


@register("HDF5Data")
def _hdf5_data(lp, phase, base_dir, seed=None, world=None):
    p = lp.hdf5_data_param
    if lp.HasField("transform_param") and has_any_field(lp.transform_param):
        raise DataError("HDF5Data does not transform data (as in Caffe): remove "
                        "transform_param and store the data transformed")
    list_path = resolve_path(p.source, search_bases(base_dir), "hdf5_data_param.source",
                             directory=False)
    bases = [os.path.dirname(list_path)] + search_bases(base_dir)
    files = [resolve_path(entry, bases, f"HDF5 file (line {n} of {list_path})",
                          directory=False)
             for n, entry in read_list(list_path, "the HDF5 list file")]
    return HDF5DataSource(files, list(lp.top),
                          _batch_size(p.batch_size, "hdf5_data_param.batch_size"),
                          p.shuffle, lp.name, phase, seed, world)


# ----------------------------------------------------------------------------- Data (LMDB)

class LMDBDataSource(Source):
    """Caffe's Data layer on an LMDB of Datum messages, read in key order and wrapping
    around; raw (``data`` bytes or ``float_data``) or encoded images. Tops: data (N, C,
    H, W) transformed by transform_param, and label (N,) when there is a second top.

    The record stream is the records in key order, wrapping around, from the start
    ``rand_skip`` draws (from the seed: alike on every rank). Sharded (rank r of N), the
    source reads the records at places r, r+N, r+2N, ... of it (Caffe's
    DataLayer::Skip): it steps over the N-1 records between two of its own without
    decoding them. ``epoch`` counts wraps, ``index`` is the place in key order of the
    record read next, ``key`` its key."""

    type_name = "Data"

    def __init__(self, path, batch_size, transformer=None, n_tops=2, rand_skip=0,
                 name="data", phase="TRAIN", seed=None, world=None):
        super().__init__(name, phase, seed, world)
        self.path, self.batch_size, self.n_tops = path, batch_size, n_tops
        self.transformer = transformer or Transformer(None, phase)
        self.rand_skip = int(rand_skip)
        self.env = acquire_lmdb(path)
        self.count = self.env.stat()["entries"]
        if not self.count:
            self.close()
            raise DataError(f"the LMDB database '{path}' is empty")
        with self.env.begin() as txn:
            key, value = next(iter(txn.cursor()))
        first = self._decode(key, value)[0]
        self.image_shape = first.shape
        self.out_shape = self.transformer.output_shape(first.shape)
        self._txn = self._cursor = None
        self._rewind()

    def _decode(self, key, value):
        what = f"record '{bytes(key).decode('utf-8', 'replace')}' of '{self.path}'"
        datum = parse_datum(value, what)
        return datum_to_array(datum, self.transformer.color, what), datum.label, what

    def top_shapes(self):
        shapes = [(self.batch_size,) + tuple(self.out_shape), (self.batch_size,)]
        return shapes[:max(1, min(self.n_tops, 2))]

    def _rewind(self):
        skip = int(self.start_rng().integers(self.rand_skip)) % self.count \
            if self.rand_skip else 0
        self.epoch, self.index, self._at_end = 0, 0, False
        with self.env.begin() as txn:
            cur = txn.cursor()
            cur.first()
            for _ in range(skip + self.world.rank):
                self._step(cur)
            self._key = None if self._at_end else bytes(cur.key())
        self._seek = True

    def _wrap(self, cur):
        """At the end of the records: back to the first, in the next epoch."""
        if self._at_end:
            cur.first()
            self.epoch, self.index, self._at_end = self.epoch + 1, 0, False

    def _step(self, cur):
        """Step over one record (to the next in the stream)."""
        self._wrap(cur)
        self.index += 1
        self._at_end = not cur.next()

    def _ensure_cursor(self):
        if self._cursor is None:
            self._txn = self.env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            self._seek = True
        if self._seek:
            self._at_end = self._key is None
            if not self._at_end and not self._cursor.set_key(self._key):
                raise DataError(f"the saved position (record '{self._key!r}') is not in "
                                f"'{self.path}': the database changed")
            self._seek = False
        return self._cursor

    def next_batch(self):
        cur = self._ensure_cursor()
        images = np.empty((self.batch_size,) + tuple(self.image_shape), dtype=np.float32)
        labels = np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            self._wrap(cur)
            image, label, what = self._decode(cur.key(), cur.value())
            if image.shape != self.image_shape:
                raise DataError(f"{what} holds an image of shape {list(image.shape)}, the "
                                f"first record {list(self.image_shape)}; Data needs one size "
                                "(resize the images, e.g. convert_imageset's resize_height "
                                "and resize_width)")
            images[i], labels[i] = image, label
            self.index += 1
            self._at_end = not cur.next()
            for _ in range(self.world.size - 1):         # the other ranks' records
                self._step(cur)
        self._key = None if self._at_end else bytes(cur.key())
        data = self.transformer(images, self.rng)
        return [data, labels][:len(self.top_shapes())]

    def _position(self):
        return {"epoch": self.epoch, "index": self.index,
                "key": None if self._key is None else self._key.hex()}

    def _set_position(self, state):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._key = None if state.get("key") is None else bytes.fromhex(state["key"])
        self._seek = True

    def close(self):
        if self._txn is not None:
            self._txn.abort()
            self._txn = self._cursor = None
        if self.env is not None:
            release_lmdb(self.env)
            self.env = None


@register("Data")
def _data(lp, phase, base_dir, seed=None, world=None):
    from ..formats.proto import caffe_pb2
    p = lp.data_param
    if p.HasField("backend") and p.backend == caffe_pb2.DataParameter.LEVELDB:
        raise DataError("data_param.backend LEVELDB is not supported; symnet reads LMDB "
                        "only: convert the database to LMDB and set backend: LMDB")
    path = resolve_path(p.source, search_bases(base_dir), "data_param.source")
    if not p.HasField("backend") and looks_like_leveldb(path):
        raise DataError(f"data_param.source '{path}' is a LevelDB database (Caffe's default "
                        "backend when backend is not set); symnet reads LMDB only: convert "
                        "it to LMDB and set backend: LMDB")
    return LMDBDataSource(path, _batch_size(p.batch_size, "data_param.batch_size"),
                          _transformer(lp, phase, base_dir), len(lp.top), p.rand_skip,
                          lp.name, phase, seed, world)


# ----------------------------------------------------------------------------- ImageData

def read_image_list(path):
    """``path label`` lines (the label after the last space) as [(path, label)]."""
    entries = []
    for n, line in read_list(path, "the image list file"):
        parts = line.rsplit(None, 1)
        try:
            if len(parts) != 2:
                raise ValueError
            entries.append((parts[0], int(parts[1])))
        except ValueError:
            raise DataError(f"line {n} of the image list '{path}' is {line!r}; expected "
                            "'path label' with an integer label") from None
    if not entries:
        raise DataError(f"the image list '{path}' is empty")
    return entries


class ImageDataSource(Source):
    """Caffe's ImageData: images named in a list file (``path label`` lines), loaded with
    Pillow (BGR, or gray unless ``is_color``), resized to new_height x new_width when
    given, transformed; with ``shuffle`` the order is permuted anew every epoch.

    The record stream is the list, epoch after epoch, each epoch in its order (permuted
    with ``shuffle``, from the seed alone: alike on every rank), from the start
    ``rand_skip`` draws. Sharded (rank r of N), the source reads the images at places
    r, r+N, r+2N, ... of it; ``epoch`` and ``cursor`` are the place of the image read
    next."""

    type_name = "ImageData"

    def __init__(self, entries, batch_size, root="", is_color=True, new_height=0,
                 new_width=0, transformer=None, n_tops=2, shuffle=False, rand_skip=0,
                 name="data", phase="TRAIN", seed=None, world=None):
        super().__init__(name, phase, seed, world)
        if bool(new_height) != bool(new_width):
            raise DataError("image_data_param: set new_height and new_width together")
        self.entries, self.root = list(entries), root
        self.batch_size, self.n_tops = batch_size, n_tops
        self.is_color, self.size = bool(is_color), (int(new_height), int(new_width))
        self.transformer = transformer or Transformer(None, phase)
        self.shuffle, self.rand_skip = bool(shuffle), int(rand_skip)
        first = self._load(0)
        self.image_shape = first.shape
        self.out_shape = self.transformer.output_shape(first.shape)
        self._rewind()

    def _path(self, index):
        return os.path.join(self.root, self.entries[index][0]) if self.root else \
            self.entries[index][0]

    def _load(self, index):
        return read_image(self._path(index), self.is_color, *self.size)

    def top_shapes(self):
        shapes = [(self.batch_size,) + tuple(self.out_shape), (self.batch_size,)]
        return shapes[:max(1, min(self.n_tops, 2))]

    def _order(self, epoch):
        n = len(self.entries)
        return self.epoch_rng(epoch).permutation(n) if self.shuffle else np.arange(n)

    def _rewind(self):
        skip = int(self.start_rng().integers(self.rand_skip)) % len(self.entries) \
            if self.rand_skip else 0
        self.epoch, self.cursor = divmod(skip + self.world.rank, len(self.entries))
        self._perm = None

    def next_batch(self):
        images = np.empty((self.batch_size,) + tuple(self.image_shape), dtype=np.uint8)
        labels = np.empty(self.batch_size, dtype=np.float32)
        for i in range(self.batch_size):
            if self._perm is None or self._perm[0] != self.epoch:
                self._perm = (self.epoch, self._order(self.epoch))
            index = int(self._perm[1][self.cursor])
            image = self._load(index)
            if image.shape != self.image_shape:
                raise DataError(f"image '{self._path(index)}' has shape {list(image.shape)} "
                                f"(channels, height, width), the first "
                                f"{list(self.image_shape)}; set new_height and new_width "
                                "to resize them to one size")
            images[i], labels[i] = image, self.entries[index][1]
            wraps, self.cursor = divmod(self.cursor + self.world.size, len(self.entries))
            self.epoch += wraps
        data = self.transformer(images, self.rng)
        return [data, labels][:len(self.top_shapes())]

    def _position(self):
        return {"epoch": self.epoch, "cursor": self.cursor}

    def _set_position(self, state):
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        if not 0 <= self.cursor < len(self.entries):
            raise DataError(f"ImageData '{self.name}': saved cursor {self.cursor} is outside "
                            f"the {len(self.entries)} images of the list")


@register("ImageData")
def _image_data(lp, phase, base_dir, seed=None, world=None):
    p = lp.image_data_param
    list_path = resolve_path(p.source, search_bases(base_dir), "image_data_param.source",
                             directory=False)
    entries = read_image_list(list_path)
    root = ""
    if p.root_folder:
        root = resolve_path(p.root_folder, search_bases(base_dir),
                            "image_data_param.root_folder", directory=True)
    else:
        # Caffe reads the paths as given (from the working directory); a list next to its
        # images works from anywhere too.
        first = entries[0][0]
        if not os.path.isabs(first) and not os.path.exists(first):
            for base in [os.path.dirname(list_path)] + search_bases(base_dir):
                if os.path.exists(os.path.join(base, first)):
                    root = base
                    break
    return ImageDataSource(entries, _batch_size(p.batch_size, "image_data_param.batch_size"),
                           root, p.is_color, p.new_height, p.new_width,
                           _transformer(lp, phase, base_dir), len(lp.top), p.shuffle,
                           p.rand_skip, lp.name, phase, seed, world)
