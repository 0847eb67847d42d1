"""Blob: Caffe's N-D array pair, ``data`` and ``diff``, float32 and C-contiguous.

Each is a ``SyncedMemory`` (runtime/memory.py): a host array and, once a compiled call
on a device backend has used it, a device copy, with a head saying which is current.
``blob.data`` / ``blob.diff`` are pycaffe's: the host array, brought up to date from the
device if the device is newer, and the host becomes the head (so ``blob.data[...] = x``
is uploaded by the next call that reads it). Handing the host array out writable is a
write, as Caffe's mutable_cpu_data: the memory gets a new ``version``, so values a plan
caches from the parameters (a folded BatchNorm, Winograd's transformed weights) are
computed again at the next call. ``read_data()`` is a read and keeps the version.
The array handed out is a fresh view: while a script keeps it (``w = blob.data``, then
``w[...] = x`` after some forwards, which Caffe's CPU mode sees), every call counts the
memory as written, so those caches are recomputed; once it is dropped they are kept
again. (On a device backend, a write through a kept array after a call that moved the
head to the device is not uploaded, as in Caffe's GPU mode: take ``blob.data`` again.)

Compiled calls of Nets and solvers read and write the device copies, so values stay on
the device between calls; what Python never touches never moves.
"""
from __future__ import annotations

import math

import numpy as np

from .memory import SyncedMemory


class Blob:
    def __init__(self, shape=(), name=""):
        self.name = name
        shape = tuple(int(d) for d in shape)
        self.data_mem = SyncedMemory(shape)
        self.diff_mem = SyncedMemory(shape)

    # ---- arrays (assignment keeps the array object, as pycaffe users expect)
    @property
    def data(self) -> np.ndarray:
        return self.data_mem.exposed()

    @data.setter
    def data(self, value):
        self.data_mem.host_write()[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self.diff_mem.exposed()

    @diff.setter
    def diff(self, value):
        self.diff_mem.host_write()[...] = value

    def read_data(self) -> np.ndarray:
        """The data for reading only (Caffe's cpu_data): synced from the device when it is
        newer, without making the host the head, so nothing is uploaded again."""
        return self.data_mem.host_read()

    def read_diff(self) -> np.ndarray:
        return self.diff_mem.host_read()

    def share_data(self, other: "Blob"):
        """Use ``other``'s data memory (Caffe's ShareData): the same values, host and
        device."""
        if other.shape != self.shape:
            raise ValueError(f"blob '{self.name}': cannot share data of shape {other.shape} "
                             f"with shape {self.shape}")
        self.data_mem = other.data_mem

    # ---- shape
    @property
    def shape(self) -> tuple:
        return self.data_mem.shape

    @property
    def count(self) -> int:
        return self.data_mem.size

    @property
    def num_axes(self) -> int:
        return len(self.shape)

    def _legacy(self, axis):
        if self.num_axes > 4:
            raise ValueError(f"blob '{self.name}': legacy accessors need at most 4 axes, "
                             f"shape is {self.shape}")
        shape = self.shape + (1,) * (4 - self.num_axes)
        return shape[axis]

    @property
    def num(self):
        return self._legacy(0)

    @property
    def channels(self):
        return self._legacy(1)

    @property
    def height(self):
        return self._legacy(2)

    @property
    def width(self):
        return self._legacy(3)

    def reshape(self, *shape):
        """New shape; the values are kept when the count is unchanged, else zeroed."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob '{self.name}': negative size in shape {shape}")
        if shape == self.shape:
            return
        if math.prod(shape) == self.count:
            self.data_mem.reshape(shape)
            self.diff_mem.reshape(shape)
        else:
            self.data_mem = SyncedMemory(shape)
            self.diff_mem = SyncedMemory(shape)

    def __repr__(self):
        return f"Blob('{self.name}', shape={self.shape})"

    @classmethod
    def wrap(cls, data, diff=None, name=""):
        """A Blob over existing float32 arrays (no copy): a Python layer's view of a
        compiled function's buffers."""
        blob = cls.__new__(cls)
        blob.name = name
        blob.data_mem = SyncedMemory.wrap(data)
        blob.diff_mem = SyncedMemory.wrap(diff if diff is not None else np.zeros_like(data))
        return blob


def flatten_blobs(blobs, data=True, diff=True):
    """Lay the blobs' ``data`` (and ``diff``) end to end in flat memories, values kept,
    and make each blob's memories views into them, so one kernel can update every blob
    at once (a solver's parameter update). Blob's API is unchanged: ``blob.data`` is a
    view of the flat host array, and the device copies are views of the flat device
    buffer.

    Returns ``(data_flat, diff_flat, offsets)`` (SyncedMemory; None when not asked for).
    ``offsets[i]`` is where blob i starts. A blob whose count later changes (``reshape``
    to another size) gets memories of its own again; check with ``is_view_of``.
    """
    sizes = [b.count for b in blobs]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += n
    flats = []
    for want, attr in ((data, "data_mem"), (diff, "diff_mem")):
        if not want:
            flats.append(None)
            continue
        flat = SyncedMemory((total,))
        host = flat.host_write()
        for b, off, n in zip(blobs, offsets, sizes):
            host[off:off + n] = getattr(b, attr).host_read().reshape(-1)
            setattr(b, attr, flat.view(off, b.shape))
        flats.append(flat)
    return flats[0], flats[1], offsets


def is_view_of(blob, flat, offset, which="data") -> bool:
    """True when ``blob.data`` (or ``diff``) is still the view of ``flat`` at ``offset``."""
    mem = blob.data_mem if which == "data" else blob.diff_mem
    return flat is not None and mem.parent is flat and mem.offset == offset
