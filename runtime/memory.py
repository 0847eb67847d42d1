"""Device memory, counted transfers, and Caffe's SyncedMemory.

A ``Device`` allocates device buffers and copies between them and host arrays; every
host<->device copy goes through ``htod`` / ``dtoh`` and is counted process-wide
(``transfer_counts()``). Three devices:

- ``HostDevice`` (the cpu backend): device memory is host memory; nothing is copied.
- ``EmuDevice`` (cuda-emu): an emulated device heap in this process. Its buffers are
  allocations the device made; kernels and library calls may receive only addresses
  inside a live allocation (``check``), so a host array reaching a launch is an error.
- the pycuda device (``runtime/cuda.py``), with the same interface.

``SyncedMemory`` is Caffe's: a host array and a device buffer with a head saying which
is current (``HOST``, ``DEVICE`` or ``SYNCED``). ``host_read`` / ``host_write`` are
``cpu_data`` / ``mutable_cpu_data``; ``device_read`` / ``device_write`` /
``device_overwrite`` are ``gpu_data`` / ``mutable_gpu_data`` / a write that replaces every
value (a kernel output), which needs no upload. A memory may be a view into a larger
one (a solver's flat parameter buffer): it shares that memory's head and copies.

Every access that may change the values (``host_write``, ``device_write``,
``device_overwrite``, ``fill_zero``, ``copy_from``) gives the memory a new ``version``,
a number drawn from one process-wide counter, so two memories never share a version
and a memory's version changes whenever its values may have. A view and its parent
report one version (the parent's): a write to either changes it for all of them
(conservative: a write to one view marks its siblings changed too). The executor
compares versions to skip steps computed from parameters that did not change.
"""
from __future__ import annotations

import bisect
import ctypes
import itertools
import threading
import weakref

import numpy as np

from .errors import ShapeError, SymnetError

HOST, DEVICE, SYNCED = "host", "device", "synced"

_COUNT_KEYS = ("h2d_bytes", "d2h_bytes", "h2d_calls", "d2h_calls")
_counts = dict.fromkeys(_COUNT_KEYS, 0)
_count_lock = threading.Lock()
_versions = itertools.count(1)      # next() on it is atomic in CPython


def transfer_counts() -> dict:
    """Host<->device copies since the last reset, over every device of the process:
    ``h2d_bytes``, ``d2h_bytes``, ``h2d_calls``, ``d2h_calls``."""
    with _count_lock:
        return dict(_counts)


def reset_transfer_counts():
    with _count_lock:
        for k in _COUNT_KEYS:
            _counts[k] = 0


def count_transfer(direction, nbytes):
    """Record one copy; ``direction`` is ``"h2d"`` or ``"d2h"``. Device adapters call it
    for every copy they make."""
    with _count_lock:
        _counts[direction + "_bytes"] += int(nbytes)
        _counts[direction + "_calls"] += 1


class DeviceError(SymnetError, RuntimeError):
    """A device address or copy that the device does not allow."""


class DeviceBuffer:
    """One device allocation: ``ptr`` (an integer address on its device), ``nbytes``.
    Freed when the last reference goes."""
    __slots__ = ("device", "ptr", "nbytes", "_handle", "__weakref__")

    def __init__(self, device, ptr, nbytes, handle):
        self.device, self.ptr, self.nbytes, self._handle = device, int(ptr), int(nbytes), handle


class HostDevice:
    """The cpu backend's 'device': host memory, no copies."""
    name = "cpu"
    is_host = True


class EmuDevice:
    """cuda-emu's device: its own heap of allocations. Only addresses inside a live
    allocation are device pointers; copies in and out are counted."""
    name = "cuda-emu"
    is_host = False
    ALIGN = 256                    # cudaMalloc's alignment

    def __init__(self):
        self._starts = []          # sorted allocation start addresses
        self._ends = {}            # start -> end
        self._lock = threading.Lock()

    def alloc(self, nbytes) -> DeviceBuffer:
        nbytes = max(int(nbytes), 4)
        store = np.zeros(nbytes + self.ALIGN, dtype=np.uint8)
        start = -store.ctypes.data % self.ALIGN + store.ctypes.data
        with self._lock:
            bisect.insort(self._starts, start)
            self._ends[start] = start + nbytes
        buf = DeviceBuffer(self, start, nbytes, store)
        weakref.finalize(buf, self._free, start)
        return buf

    def _free(self, start):
        with self._lock:
            i = bisect.bisect_left(self._starts, start)
            if i < len(self._starts) and self._starts[i] == start:
                del self._starts[i]
                del self._ends[start]

    def check(self, ptr, nbytes=0) -> bool:
        """Whether [ptr, ptr + nbytes) lies inside one live allocation."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        return i >= 0 and ptr + nbytes <= self._ends[self._starts[i]]

    def _require(self, ptr, nbytes, what):
        if not self.check(ptr, nbytes):
            raise DeviceError(f"cuda-emu: {what}: address {ptr:#x} (+{nbytes} bytes) is not "
                              "in a device allocation")

    def htod(self, dst, src: np.ndarray):
        src = np.ascontiguousarray(src, dtype=np.float32)
        self._require(dst, src.nbytes, "host-to-device copy")
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)
        count_transfer("h2d", src.nbytes)

    def dtoh(self, dst: np.ndarray, src):
        if not dst.flags.c_contiguous:
            raise DeviceError("cuda-emu: device-to-host copy into a non-contiguous array")
        self._require(src, dst.nbytes, "device-to-host copy")
        ctypes.memmove(dst.ctypes.data, src, dst.nbytes)
        count_transfer("d2h", dst.nbytes)

    def dtod(self, dst, src, nbytes):
        self._require(dst, nbytes, "device-to-device copy")
        self._require(src, nbytes, "device-to-device copy")
        ctypes.memmove(dst, src, nbytes)

    def memset0(self, ptr, nbytes):
        self._require(ptr, nbytes, "memset")
        ctypes.memset(ptr, 0, nbytes)


_devices = {}
_devices_lock = threading.Lock()


def get_device(backend: str):
    """The process's device object for a backend name (one per process)."""
    with _devices_lock:
        dev = _devices.get(backend)
        if dev is None:
            if backend == "cpu":
                dev = HostDevice()
            elif backend == "cuda-emu":
                dev = EmuDevice()
            elif backend == "cuda":
                from .cuda import CudaDevice
                dev = CudaDevice()
            else:
                raise ValueError(f"unknown backend {backend!r}; expected 'cpu', 'cuda-emu' "
                                 "or 'cuda'")
            _devices[backend] = dev
        return dev


class SyncedMemory:
    """A float32 array with a host copy and a device copy (Caffe's SyncedMemory).

    ``SyncedMemory(shape)`` owns its memory; ``SyncedMemory.wrap(array)`` wraps a host
    array without copying; ``parent.view(offset, shape)`` is a window into ``parent``
    that shares its head (its transfers move the whole parent)."""

    def __init__(self, shape=(), host=None, parent=None, offset=0):
        self._parent = parent
        self._offset = int(offset)
        if parent is not None:
            n = int(np.prod(shape, dtype=np.int64))
            self._host = parent._host[offset:offset + n].reshape(shape)
        else:
            self._host = host if host is not None else np.zeros(shape, dtype=np.float32)
            self._head = HOST
            self._device = None
            self._buf = None
            self._version = next(_versions)
            self._exposed = []          # weak references to host arrays handed out

    @classmethod
    def wrap(cls, array):
        """Host memory around ``array`` itself, a float32 array (the executor hands it to
        kernels only when it is C-contiguous, and writes it only when writable)."""
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise ShapeError(f"SyncedMemory.wrap: found {found}, expected a float32 array")
        return cls(array.shape, host=array)

    def view(self, offset, shape):
        root = self._root()
        return SyncedMemory(shape, parent=root, offset=self._offset_in_root() + offset)

    def _root(self):
        return self._parent if self._parent is not None else self

    def _offset_in_root(self):
        return self._offset if self._parent is not None else 0

    # ---- inspection
    @property
    def shape(self):
        return self._host.shape

    @property
    def size(self):
        return int(self._host.size)

    @property
    def host_array(self) -> np.ndarray:
        """The host array as it is, without bringing it up to date (for inspection)."""
        return self._host

    @property
    def nbytes(self):
        return 4 * self.size

    @property
    def head(self):
        return self._root()._head

    @property
    def version(self) -> int:
        """Changes at every access that may write the values (of this memory, its parent
        or any view of the parent); unique across the memories of the process. While an
        array ``exposed`` handed out is alive, its holder may write through it at any
        time, so every read of the version is a new one."""
        root = self._root()
        if root._exposed:
            root._exposed = [r for r in root._exposed if r() is not None]
            if root._exposed:
                root._version = next(_versions)
        return root._version

    def exposed(self) -> np.ndarray:
        """The host array for writing (``host_write``) as a new view that stays writable
        for as long as its holder keeps it: pycaffe's ``blob.data``. A script may keep
        it and write later (``w = blob.data`` ... ``w[...] = x``), as Caffe's CPU mode
        sees; until the view is dropped, the memory counts as written at every call."""
        root = self._parent if self._parent is not None else self
        if root._head == DEVICE:
            self.host_read()
        root._head = HOST                       # host_write, inlined
        root._version = next(_versions)
        arr = self._host.view()
        refs = root._exposed
        if len(refs) >= root.__dict__.get("_exposed_limit", 16):
            # views dropped since are forgotten here too (``version`` may never be read,
            # e.g. for a net's output blobs), keeping the list as long as what is alive
            refs[:] = [r for r in refs if r() is not None]
            root._exposed_limit = max(16, 2 * len(refs))
        refs.append(weakref.ref(arr))
        return arr

    def touch(self):
        """Record a write made behind the memory's back (a new version)."""
        self._root()._version = next(_versions)

    @property
    def device(self):
        return self._root()._device

    @property
    def parent(self):
        return self._parent

    @property
    def offset(self):
        return self._offset

    def reshape(self, shape):
        """The same memory under another shape of the same count."""
        self._host = self._host.reshape(shape)

    # ---- host side
    def host_address(self, write=False) -> int:
        """The host array's address, its values up to date (``write``: the host becomes
        the head). The address is the array's for its lifetime, so it is kept."""
        arr = self.host_write() if write else self.host_read()
        ptr = self.__dict__.get("_hptr")
        if ptr is None:
            ptr = self._hptr = arr.__array_interface__["data"][0]
        return ptr

    def host_read(self) -> np.ndarray:
        """The host array, brought up to date (Caffe's cpu_data)."""
        root = self._root()
        if root._head == DEVICE:
            root._device.dtoh(root._host.reshape(-1), root._buf.ptr)
            root._head = SYNCED
        return self._host

    def host_write(self) -> np.ndarray:
        """The host array for writing: up to date, and the host becomes the head (Caffe's
        mutable_cpu_data, what pycaffe's ``blob.data`` gives)."""
        self.host_read()
        root = self._root()
        root._head = HOST
        root._version = next(_versions)
        return self._host

    # ---- device side
    def _bind_device(self, device):
        root = self._root()
        if root._device is not device:
            if root._head == DEVICE:            # current on another device: via the host
                self.host_read()
            root._device, root._buf, root._head = device, None, HOST
        if root._buf is None:
            root._buf = device.alloc(root.nbytes)
            root._head = HOST
        return root

    def device_ptr(self, device) -> int:
        """The device address of this memory (allocated if needed), without syncing."""
        root = self._bind_device(device)
        return root._buf.ptr + 4 * self._offset_in_root()

    def device_read(self, device) -> int:
        """The device address, its values up to date (Caffe's gpu_data)."""
        root = self._bind_device(device)
        if root._head == HOST:
            device.htod(root._buf.ptr, root._host.reshape(-1))
            root._head = SYNCED
        return root._buf.ptr + 4 * self._offset_in_root()

    def device_write(self, device) -> int:
        """The device address for reading and writing; the device becomes the head
        (Caffe's mutable_gpu_data)."""
        ptr = self.device_read(device)
        root = self._root()
        root._head = DEVICE
        root._version = next(_versions)
        return ptr

    def device_overwrite(self, device) -> int:
        """The device address for a write of every value: no upload, the device becomes
        the head. A view's parent must be current on the device already (its other
        values are kept), so it is uploaded first if the host is newer."""
        if self._parent is not None or self.head == SYNCED:
            return self.device_write(device)
        root = self._bind_device(device)
        root._head = DEVICE
        root._version = next(_versions)
        return root._buf.ptr

    def fill_zero(self):
        """Zero every value where it is current (a device memset when the device holds
        the memory, so nothing moves between host and device)."""
        root = self._root()
        root._version = next(_versions)
        if root._device is None or root._buf is None:
            self._host[...] = 0
            return
        if self._parent is None and root._head != SYNCED:
            root._device.memset0(root._buf.ptr, root.nbytes)
            root._head = DEVICE
            return
        if root._head == HOST:
            self._host[...] = 0
        else:
            root._device.memset0(root._buf.ptr + 4 * self._offset_in_root(), self.nbytes)
            if root._head == SYNCED:
                self._host[...] = 0

    def copy_from(self, other: "SyncedMemory"):
        """Copy another memory's values of the same size, on the device when both live
        on the same device and ``other`` is current there."""
        if other.size != self.size:
            raise ValueError(f"copy_from: {other.size} values into {self.size}")
        dev = other.device
        if dev is not None and not dev.is_host and other.head != HOST and \
                self.device in (None, dev):
            src = other.device_read(dev)
            dst = self.device_overwrite(dev) if self._parent is None else self.device_write(dev)
            dev.dtod(dst, src, self.nbytes)
            return
        self.host_write()[...] = other.host_read().reshape(self.shape)
