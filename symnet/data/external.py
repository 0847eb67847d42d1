"""``ExternalData``: data sources outside symnet, in Python or in a shared library.

Both are named by the layer's ``python_param`` (the message Caffe's Python layers use):

Python::

    layer { name: "data" type: "ExternalData" top: "data" top: "label"
            python_param { module: "my_sources" layer: "CsvSource"
                           param_str: "path=train.csv batch=32" } }

``module`` is imported (from ``sys.path``; when that fails, ``<module>.py`` -- or a
module path ending in ``.py`` -- is loaded from the prototxt's folder), ``layer`` is the
class. It is instantiated with the keyword arguments its ``__init__`` accepts among
``param_str``, ``phase`` ("TRAIN"/"TEST"), ``seed`` (int: seed every random generator
from it), ``base_dir`` (the prototxt's folder), ``name`` (the layer's name), ``rank``
and ``world_size`` (see "Data-parallel training" below); the instance implements

* ``top_shapes() -> list of shape tuples`` (one per top, fixed),
* ``next_batch() -> list of arrays`` (one per top, of those shapes; fresh arrays:
  several batches are queued), called on the prefetch thread,
* optionally ``state() -> dict`` / ``set_state(dict)`` (its position, JSON-serialisable,
  for solver snapshots; ``state`` is called after every batch, keep it cheap),
  ``reseed(seed)`` and ``close()``.

Shared library: ``module: "lib:<path to .so/.dylib/.dll>"``, ``param_str`` is passed
to its create function, and ``layer`` (optional) is the prefix of its exported symbols
(default ``symnet_data``). The C ABI is declared and documented in ``symnet_data.h``,
in :func:`include_dir`.

Data-parallel training: a source is told its rank r and the number of processes N
(the world of :mod:`symnet.data`; rank 0 of 1 in a single process and in the TEST
phase) and should then produce the records r, r+N, r+2N, ... of what it would produce
alone, drawing its shuffles from ``seed`` alone (alike on every rank) and its other
random numbers from the seed and the rank. A Python source gets them as the keyword
arguments ``rank`` and ``world_size`` (a class that accepts neither, nor ``**kwargs``,
works in one process only: with N > 1 symnet refuses it). A shared library gets them
from ``symnet_data_set_world(source, rank, size)``, called once right after create
(ABI version 2; a library without it works in one process only). The position of a
sharded source, saved with ``state()``, holds the shard (``"shard": {"rank", "size"}``,
around the source's own state), and restoring it on another rank or with another N is
refused.

A crash in a shared library: Python cannot recover from a fault in native code (a
SIGSEGV, SIGBUS, SIGFPE, SIGILL or an abort), so a library that crashes ends the whole
process, as in Caffe. What symnet does is make the report name the culprit: loading a
library source turns on Python's :mod:`faulthandler` (if it is not on already; it
writes to stderr), and every call into the library goes through a Python frame named
after the layer, the library and the C function, so the fatal-error traceback on
stderr reads, for the thread that crashed::

    Fatal Python error: Segmentation fault
    Current thread ... (most recent call first):
      File "<ExternalData layer 'data': library /path/libsource.so>", line 2 in symnet_data_next

and the process dies of the signal (exit status -11 for SIGSEGV). Run a new library
under a debugger or ASan to find the fault in it.
"""
from __future__ import annotations

import ctypes
import faulthandler
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import types

import numpy as np

from . import register
from .base import DataError, World, check_shard, layer_seed, resolve_path, search_bases

LIB_PREFIX = "lib:"
ABI_VERSION = 2
ABI_VERSIONS = (1, 2)        # 1: without symnet_data_set_world
MAX_AXES = 32
_LIB_SUFFIXES = (".so", ".dylib", ".dll")


def include_dir() -> str:
    """The folder holding ``symnet_data.h`` (what ``symnet include-dir`` prints)."""
    from .. import runtime
    return os.path.join(os.path.dirname(os.path.abspath(runtime.__file__)), "include")


def header_path() -> str:
    return os.path.join(include_dir(), "symnet_data.h")


# ----------------------------------------------------------------------------- Python

class PythonSource:
    """Wraps a user's source object: checks what it returns and passes the rest on."""

    def __init__(self, impl, what, world=None):
        self.impl, self.what = impl, what
        self.world = World.of(world)
        for method in ("top_shapes", "next_batch"):
            if not callable(getattr(impl, method, None)):
                raise DataError(f"{what} has no method {method}(); a source implements "
                                "top_shapes() and next_batch()")
        try:
            shapes = [tuple(int(d) for d in s) for s in impl.top_shapes()]
        except Exception as e:
            raise DataError(f"{what}.top_shapes() did not give a list of shape tuples: "
                            f"{type(e).__name__}: {e}") from e
        if not shapes:
            raise DataError(f"{what}.top_shapes() gave no tops")
        self._shapes = shapes
        if self.world.size > 1 and callable(getattr(impl, "state", None)):
            self.state = self._shard_state                   # instance attributes: they
            if callable(getattr(impl, "set_state", None)):   # come before __getattr__
                self.set_state = self._set_shard_state

    def _shard_state(self):
        inner = self.impl.state()
        if inner is None:
            return None
        return {"type": "ExternalData", "shard": dict(self.world._asdict()), "state": inner}

    def _set_shard_state(self, state):
        check_shard(state, self.world, self.what)
        if not isinstance(state, dict) or "state" not in state:
            raise DataError(f"{self.what}: not the position of a sharded source")
        self.impl.set_state(state["state"])

    def top_shapes(self):
        return list(self._shapes)

    def next_batch(self):
        batch = self.impl.next_batch()
        if isinstance(batch, np.ndarray) or not hasattr(batch, "__len__"):
            raise DataError(f"{self.what}.next_batch() returned {type(batch).__name__}; "
                            "expected a list with one array per top")
        if len(batch) != len(self._shapes):
            raise DataError(f"{self.what}.next_batch() returned {len(batch)} arrays, "
                            f"top_shapes() declares {len(self._shapes)} tops")
        out = []
        for i, (a, shape) in enumerate(zip(batch, self._shapes)):
            a = np.asarray(a, dtype=np.float32)
            if a.shape != shape:
                raise DataError(f"{self.what}.next_batch(): top {i} has shape {list(a.shape)}, "
                                f"top_shapes() declares {list(shape)}")
            out.append(np.ascontiguousarray(a))
        return out

    def __getattr__(self, name):        # state, set_state, reseed, close, set_arrays...
        if name.startswith("_") or name == "impl":
            raise AttributeError(name)
        return getattr(self.impl, name)


def _load_module(module, base_dir):
    bases = search_bases(base_dir)
    if module.endswith(".py") or os.sep in module or "/" in module:
        path = resolve_path(module, bases, "python_param.module", directory=False)
        return _module_from_file(path)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        rel = module.replace(".", os.sep) + ".py"
        for b in bases:
            path = os.path.join(b, rel)
            if os.path.isfile(path):
                return _module_from_file(path)
        raise DataError(f"python_param.module '{module}' cannot be imported (not on "
                        f"sys.path, and no {rel} next to the prototxt)") from None


def _module_from_file(path):
    name = "symnet_external_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def python_source(module, cls_name, param_str="", phase="TRAIN", seed=None, base_dir=".",
                  name="data", world=None):
    mod = _load_module(module, base_dir)
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise DataError(f"python_param.layer: module '{module}' has no class '{cls_name}'")
    world = World.of(world)
    offered = {"param_str": param_str, "phase": phase, "seed": seed, "base_dir": base_dir,
               "name": name, "rank": world.rank, "world_size": world.size}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    what = f"ExternalData source {module}.{cls_name}"
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = offered
    else:
        kwargs = {k: v for k, v in offered.items() if k in params}
        if world.size > 1 and not {"rank", "world_size"} <= set(kwargs):
            raise DataError(f"{what} cannot be sharded across {world.size} processes: its "
                            "__init__ takes no 'rank' and 'world_size' arguments (a source "
                            "for data-parallel training reads the records rank, rank + "
                            "world_size, ... of its stream)")
    impl = cls(**kwargs)
    return PythonSource(impl, what, world)


# ----------------------------------------------------------------------------- C library

def _call(function, *args):
    return function(*args)


def _named_caller(label, symbol):
    """``_call`` as a function whose frame reads ``File "<label>" ... in <symbol>`` in
    a traceback, faulthandler's included: the last words of a process that crashed in
    the library name the layer, the library and the C function."""
    code = _call.__code__.replace(co_filename=label, co_name=symbol, co_firstlineno=1,
                                  **({"co_qualname": symbol}
                                     if hasattr(_call.__code__, "co_qualname") else {}))
    return types.FunctionType(code, {}, symbol)


def _enable_faulthandler():
    """Turn on faulthandler (all threads, to stderr) unless it is on already."""
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError, RuntimeError):
        # sys.stderr without a file descriptor (replaced by a capture): the process's
        # standard error, file descriptor 2
        try:
            faulthandler.enable(file=2, all_threads=True)
        except (ValueError, OSError, RuntimeError):
            pass


class SharedLibrarySource:
    """A source in a shared library with the C ABI of ``symnet_data.h``; ``name`` is the
    layer's name. Every call into the library goes through a frame named after the
    layer and the library (see the module's notes on crashes)."""

    type_name = "ExternalData"

    def __init__(self, path, param_str="", phase="TRAIN", seed=0, prefix="symnet_data",
                 name="data", world=None):
        self.path, self.prefix, self._handle = path, prefix or "symnet_data", None
        self.name = str(name)
        self.world = World.of(world)
        self.label = f"<ExternalData layer '{self.name}': library {path}>"
        _enable_faulthandler()
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise DataError(f"{self._who()}: cannot load the shared library: {e}") from None
        required = {
            "create": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64,
                                         ctypes.c_char_p, ctypes.c_size_t]),
            "num_tops": (ctypes.c_int, [ctypes.c_void_p]),
            "top_shape": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int,
                                         ctypes.POINTER(ctypes.c_int64), ctypes.c_int]),
            "next": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]),
            "error": (ctypes.c_char_p, [ctypes.c_void_p]),
            "destroy": (None, [ctypes.c_void_p]),
        }
        optional = {
            "abi_version": (ctypes.c_int, []),
            "get_state": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
            "set_state": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
            "set_world": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]),
        }
        self.fn, missing = {}, []
        for table, needed in ((required, True), (optional, False)):
            for short, (restype, argtypes) in table.items():
                f = getattr(self.lib, f"{self.prefix}_{short}", None)
                if f is None:
                    if needed:
                        missing.append(f"{self.prefix}_{short}")
                    continue
                f.restype, f.argtypes = restype, argtypes
                caller = _named_caller(self.label, f"{self.prefix}_{short}")
                self.fn[short] = functools.partial(caller, f)
        if missing:
            raise DataError(f"{self._who()}: the shared library does not export "
                            f"{', '.join(missing)} (see {header_path()})")
        if "abi_version" in self.fn and self.fn["abi_version"]() not in ABI_VERSIONS:
            raise DataError(f"{self._who()}: the shared library was built for "
                            f"symnet_data ABI version {self.fn['abi_version']()}; this "
                            f"symnet reads versions "
                            f"{', '.join(map(str, ABI_VERSIONS))}")
        if self.world.size > 1 and "set_world" not in self.fn:
            raise DataError(f"{self._who()}: cannot be sharded across {self.world.size} "
                            f"processes: the shared library does not export "
                            f"{self.prefix}_set_world (ABI version 2, see {header_path()})")
        err = ctypes.create_string_buffer(2048)
        handle = self.fn["create"](str(param_str).encode("utf-8"), str(phase).encode(),
                                   ctypes.c_uint64(int(seed) & 0xFFFFFFFFFFFFFFFF), err,
                                   len(err))
        if not handle:
            msg = err.value.decode("utf-8", "replace") or "no message"
            raise DataError(f"{self._who()}: {self.prefix}_create failed: {msg}")
        self._handle = handle
        if "set_world" in self.fn and \
                self.fn["set_world"](handle, self.world.rank, self.world.size) != 0:
            self._fail("set_world", f"failed for rank {self.world.rank} of {self.world.size}")
        n = self.fn["num_tops"](handle)
        if n < 1:
            self._fail("num_tops", f"gave {n} tops")
        self._shapes = []
        dims = (ctypes.c_int64 * MAX_AXES)()
        for i in range(n):
            nd = self.fn["top_shape"](handle, i, dims, MAX_AXES)
            if nd < 0 or nd > MAX_AXES:
                self._fail("top_shape", f"gave {nd} axes for top {i}")
            shape = tuple(int(dims[k]) for k in range(nd))
            if any(d < 1 for d in shape):
                self._fail("top_shape", f"gave shape {list(shape)} for top {i}")
            self._shapes.append(shape)

    def _who(self):
        return f"ExternalData '{self.name}' (library '{self.path}')"

    def _message(self):
        if not self._handle:
            return ""
        msg = self.fn["error"](self._handle)
        return msg.decode("utf-8", "replace") if msg else ""

    def _fail(self, short, what):
        msg = self._message()
        self.close()
        raise DataError(f"{self._who()}: {self.prefix}_{short} {what}"
                        + (f": {msg}" if msg else ""))

    def top_shapes(self):
        return list(self._shapes)

    def next_batch(self):
        if not self._handle:
            raise DataError(f"{self._who()}: the source is closed")
        out = [np.empty(s, dtype=np.float32) for s in self._shapes]
        ptrs = (ctypes.c_void_p * len(out))(*[a.ctypes.data for a in out])
        rc = self.fn["next"](self._handle, ptrs)
        if rc != 0:
            raise DataError(f"{self._who()}: {self.prefix}_next failed ({rc}): "
                            f"{self._message() or 'no message'}")
        return out

    def state(self):
        f = self.fn.get("get_state")
        if f is None or not self._handle:
            return None
        n = f(self._handle, None, 0)
        if n < 0:
            raise DataError(f"{self._who()}: {self.prefix}_get_state failed: "
                            f"{self._message()}")
        buf = ctypes.create_string_buffer(int(n) + 1)      # room for snprintf's NUL
        if f(self._handle, buf, int(n) + 1) != n:
            raise DataError(f"{self._who()}: {self.prefix}_get_state gave two different "
                            "lengths")
        st = {"type": self.type_name, "library": os.path.basename(self.path),
              "state": buf.raw[:n].hex()}
        if self.world.size > 1:
            st["shard"] = dict(self.world._asdict())
        return st

    def set_state(self, state):
        f = self.fn.get("set_state")
        if f is None:
            raise DataError(f"{self._who()}: the shared library does not export "
                            f"{self.prefix}_set_state; its position cannot be restored")
        if not isinstance(state, dict) or state.get("type") != self.type_name:
            raise DataError("not the position of an ExternalData shared-library source")
        check_shard(state, self.world, self._who())
        raw = bytes.fromhex(state["state"])
        if f(self._handle, raw, len(raw)) != 0:
            raise DataError(f"{self._who()}: {self.prefix}_set_state failed: "
                            f"{self._message()}")

    def close(self):
        handle, self._handle = self._handle, None
        if handle:
            self.fn["destroy"](handle)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def library_source(path, param_str="", phase="TRAIN", seed=0, prefix="", base_dir=".",
                   name="data", world=None):
    path = resolve_path(path, search_bases(base_dir), "python_param.module (lib:)",
                        directory=False)
    return SharedLibrarySource(path, param_str, phase, seed, prefix or "symnet_data", name,
                               world)


@register("ExternalData")
def _external_data(lp, phase, base_dir, seed=None, world=None):
    p = lp.python_param
    seed = layer_seed(lp.name, phase) if seed is None else int(seed)
    if not p.module:
        raise DataError('ExternalData needs python_param { module: "pkg.module" layer: '
                        '"ClassName" param_str: "..." } for a Python source, or module: '
                        '"lib:path/to/libsource.so" for a shared library')
    if p.module.startswith(LIB_PREFIX):
        return library_source(p.module[len(LIB_PREFIX):], p.param_str, phase, seed, p.layer,
                              base_dir, lp.name, world)
    if p.module.lower().endswith(_LIB_SUFFIXES):
        raise DataError(f"python_param.module '{p.module}' looks like a shared library; "
                        f"write module: \"lib:{p.module}\"")
    if not p.layer:
        raise DataError("ExternalData: python_param.layer must name the source class in "
                        f"module '{p.module}'")
    return python_source(p.module, p.layer, p.param_str, phase, seed, base_dir, lp.name,
                         world)
