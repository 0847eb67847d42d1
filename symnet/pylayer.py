"""Caffe Python layers (``type: "Python"``), run unmodified, and symbolic layers named
from prototxt through ``python_param``.

Caffe's contract: the class is built with the LayerParameter (a plain ``object``
subclass without arguments works too), ``param_str`` and ``phase`` are set, ``setup``
runs once, ``reshape`` before every forward, ``forward(bottom, top)`` and
``backward(top, propagate_down, bottom)`` work on blobs, and learnable blobs added
with ``self.blobs.add_blob(*shape)`` are parameters the solver updates.

As in pycaffe, an exception raised by the layer's code comes out of ``Net`` with its
own type and traceback; its message starts with the layer's name and module (types
not built from one message keep their arguments and get that as a note instead).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys

import numpy as np

from .layers.registry import LayerError
from .runtime.blob import Blob
from .runtime.memory import SyncedMemory

log = logging.getLogger("symnet")


class BlobVec(list):
    """A Python layer's learnable blobs (pycaffe's ``self.blobs``)."""

    def add_blob(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self.append(Blob(shape, f"param{len(self)}"))


class _SizingBlob(Blob):
    """A top blob during setup: remembers whether the layer sized it."""
    sized = False

    def reshape(self, *shape):
        self.sized = True
        super().reshape(*shape)


# ---------------------------------------------------------------- caffe alias

_alias_logged = False


def install_caffe_alias():
    """Let ``import caffe`` inside a Python layer module give ``symnet.caffe`` unless a
    working (built) pycaffe is importable; a Caffe source tree without its built
    ``_caffe`` does not count (logged once; SYMNET_CAFFE_ALIAS=0 turns it off)."""
    global _alias_logged
    if os.environ.get("SYMNET_CAFFE_ALIAS", "1") == "0":
        return
    from .caffe.alias import install_alias
    if install_alias() and not _alias_logged:
        log.info("symnet: 'import caffe' in Python layers gives symnet.caffe "
                 "(set SYMNET_CAFFE_ALIAS=0 to turn this off)")
        _alias_logged = True


@contextlib.contextmanager
def _search_path(directory):
    added = directory and directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added:
            sys.path.remove(directory)


def load_layer_object(module_name, attr, base_dir, where):
    """The class or function ``attr`` of ``module_name`` (searched on sys.path and in
    the prototxt's directory)."""
    install_caffe_alias()
    with _search_path(base_dir):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise LayerError(f"{where}: python_param.module '{module_name}' was not found "
                             f"on sys.path or in {base_dir or '.'} ({e})") from e
        except Exception as e:
            raise LayerError(f"{where}: importing module '{module_name}' raised "
                             f"{type(e).__name__}: {e}") from e
    obj = getattr(module, attr, None)
    if obj is None:
        raise LayerError(f"{where}: module '{module_name}' has no class or layer '{attr}'")
    return obj


def parse_param_str(text, where):
    """Hyper-parameters of a symbolic layer from param_str: a JSON object, or
    ``key: value`` pairs separated by commas or new lines (values read as JSON when
    they parse, else kept as strings). Never evaluated as code."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise LayerError(f"{where}: param_str is not valid JSON: {e}") from e
        if not isinstance(value, dict):
            raise LayerError(f"{where}: param_str JSON must be an object")
        return value
    out = {}
    for part in text.replace("\n", ",").split(","):
        if not part.strip():
            continue
        if ":" not in part:
            raise LayerError(f"{where}: param_str entry '{part.strip()}' is not key: value")
        key, value = (s.strip() for s in part.split(":", 1))
        if value in ("True", "False"):          # Python's spelling of JSON's booleans
            out[key] = value == "True"
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value.strip("'\"")
    return out


# ---------------------------------------------------------------- errors

def _amended(e, context):
    """``e`` with ``context`` in its message: a new exception of the same type when the
    type is built from one message (its args are one string, and rebuilding gives that
    message back), carrying e's attributes; else ``e`` itself with a note (shown under
    the message in tracebacks; Python 3.11's ``add_note``)."""
    cls = type(e)
    if len(e.args) == 1 and isinstance(e.args[0], str):
        message = f"{context}: {e.args[0]}"
        try:
            new = cls(message)
            rebuilt = type(new) is cls and new.args == (message,) and str(new) == message
        except Exception:
            rebuilt = False
        if rebuilt:
            try:
                new.__dict__.update(e.__dict__)
            except (AttributeError, TypeError):
                pass
            return new
    note = f"raised in {context}"
    if hasattr(e, "add_note"):
        e.add_note(note)
    else:                                       # Python < 3.11: the note is kept as such
        e.__notes__ = list(getattr(e, "__notes__", [])) + [note]
    return e


def _reraise_amended(e, context):
    """Raise ``e`` amended with ``context`` (see :func:`_amended`), keeping its type,
    traceback, cause and context: it reads as if the layer had raised it. Call it
    outside an ``except`` block, so the copy is not chained to the original."""
    new = _amended(e, context)
    if new is not e:
        new.__cause__, new.__context__ = e.__cause__, e.__context__
        new.__suppress_context__ = e.__suppress_context__
        new = new.with_traceback(e.__traceback__)
    try:
        raise new
    finally:
        del new, e


# ---------------------------------------------------------------- running a layer

class PythonLayerRunner:
    """One Caffe Python layer instance and the host-side calls the graph makes."""

    def __init__(self, cls, layer_param, phase, bottom_shapes, where):
        self.where, self.name = where, layer_param.name
        self.module = layer_param.python_param.module
        self.ntop = len(layer_param.top)
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        layer = self._construct(cls, layer_param)
        for attr, value in (("param_str", layer_param.python_param.param_str),
                            ("phase", phase)):
            try:
                setattr(layer, attr, value)
            except AttributeError:
                pass
        if not isinstance(getattr(layer, "blobs", None), list):
            layer.blobs = BlobVec()
        self.layer = layer
        bottoms = [Blob(s, f"bottom{i}") for i, s in enumerate(self.bottom_shapes)]
        tops = [_SizingBlob((0,), f"top{k}") for k in range(self.ntop)]
        self._call("setup", bottoms, tops)
        self._call("reshape", bottoms, tops)
        for k, t in enumerate(tops):
            if not t.sized:
                raise LayerError(f"{where}: module '{self.module}': reshape() never sized "
                                 f"top {k} (call top[{k}].reshape(...) in reshape)")
        self.top_shapes = [t.shape for t in tops]
        self.params = list(layer.blobs)

    def _context(self, what):
        return f"{self.where}: module '{self.module}': {what}"

    def _run(self, what, fn, *args):
        """Call the layer's code; an exception it raises comes out with its own type and
        traceback, its message prefixed with the layer, its module and ``what``."""
        try:
            return fn(*args)
        except LayerError:
            raise
        except Exception as e:
            error = e
        _reraise_amended(error, self._context(what))     # outside the handler: no chaining

    def _construct(self, cls, layer_param):
        """``cls(layer_param)`` as Caffe; a class whose constructor takes no argument
        (Caffe's original example: a plain object subclass) is built with ``cls()``."""
        try:
            return cls(layer_param)
        except LayerError:
            raise
        except Exception as e:
            error = e
        if isinstance(error, TypeError):
            try:
                return cls()
            except TypeError:
                pass            # neither form: the first error says why
            except LayerError:
                raise
            except Exception as e:
                error = e
        _reraise_amended(error, self._context("constructing the layer"))

    def _call(self, method, *args):
        fn = getattr(self.layer, method, None)
        if fn is None:
            raise LayerError(f"{self.where}: module '{self.module}': the layer has no "
                             f"{method}() method")
        return self._run(f"{method}()", fn, *args)

    # graph arguments: bottoms, then learnable blobs
    @property
    def n_args(self):
        return len(self.bottom_shapes) + len(self.params)

    def check_arg_shapes(self, shapes):
        want = self.bottom_shapes + [p.shape for p in self.params]
        if [tuple(s) for s in shapes] != want:
            raise LayerError(f"{self.where}: Python layer built for shapes {want}, got "
                             f"{[tuple(s) for s in shapes]}; rebuild the net (net.reshape())")

    def differentiable(self, i):
        return hasattr(self.layer, "backward")

    def _blobs(self, arrays, shapes, diffs=None, prefix="b"):
        out = []
        for j, (a, s) in enumerate(zip(arrays, shapes)):
            d = None if diffs is None else diffs[j].reshape(s)
            out.append(Blob.wrap(a.reshape(s), d, f"{prefix}{j}"))
        return out

    def _check_tops(self, tops, when):
        for k, (t, s) in enumerate(zip(tops, self.top_shapes)):
            if t.shape != s:
                raise LayerError(f"{self.where}: module '{self.module}': {when} changed top "
                                 f"{k} to shape {t.shape}, expected {s} (fixed when the net "
                                 "was built; call net.reshape() after changing inputs)")

    def forward_into(self, bottom_arrays, top_arrays):
        """Run reshape + forward with bottoms read from and tops written to arrays."""
        bottoms = self._blobs(bottom_arrays, self.bottom_shapes)
        tops = self._blobs(top_arrays, self.top_shapes, prefix="t")
        self._call("reshape", bottoms, tops)
        self._check_tops(tops, "reshape()")
        self._call("forward", bottoms, tops)
        self._check_tops(tops, "forward()")
        for t, a in zip(tops, top_arrays):
            if t.data.ctypes.data != a.ctypes.data:      # the layer replaced the array
                a.reshape(t.shape)[...] = t.data

    def forward_arrays(self, arrays):
        """Reference semantics: top arrays from argument arrays (any float dtype)."""
        nb = len(self.bottom_shapes)
        bottoms = [np.asarray(a, dtype=np.float32) for a in arrays[:nb]]
        tops = [np.zeros(s, dtype=np.float32) for s in self.top_shapes]
        self.forward_into(bottoms, tops)
        return [t.astype(arrays[0].dtype if arrays else np.float32) for t in tops]

    def backward_into(self, arg_arrays, top_arrays, k, g, wanted, grad_arrays):
        """Call backward with top k's diff = g (other tops' diffs 0); writes the wanted
        argument gradients (bottoms, then learnable blobs) into grad_arrays."""
        nb = len(self.bottom_shapes)
        bottom_diffs = [np.zeros(s, dtype=np.float32) for s in self.bottom_shapes]
        bottoms = [Blob.wrap(np.asarray(a, np.float32).reshape(s), d)
                   for a, s, d in zip(arg_arrays[:nb], self.bottom_shapes, bottom_diffs)]
        top_diffs = [np.zeros(s, dtype=np.float32) for s in self.top_shapes]
        top_diffs[k][...] = np.asarray(g, np.float32).reshape(self.top_shapes[k])
        tops = [Blob.wrap(np.asarray(a, np.float32).reshape(s), d)
                for a, s, d in zip(top_arrays, self.top_shapes, top_diffs)]
        # the layer's blobs get zeroed diffs of their own for the call, so it never
        # touches the diff memories a compiled plan is accumulating into meanwhile
        saved = [p.diff_mem for p in self.params]
        for p in self.params:
            p.diff_mem = SyncedMemory(p.shape)
        try:
            self._call("backward", tops, [i in wanted for i in range(nb)], bottoms)
            grads = bottom_diffs + [p.diff for p in self.params]
        finally:
            for p, mem in zip(self.params, saved):
                p.diff_mem = mem
        for i in wanted:
            grad_arrays[i][...] = grads[i].reshape(grad_arrays[i].shape)

    def backward_arrays(self, args, tops, k, g, wanted):
        grads = [np.zeros(np.shape(a), dtype=np.float32) for a in args]
        self.backward_into(args, tops, k, g, wanted, grads)
        return [x.astype(np.asarray(g).dtype) for x in grads]


class EffectRunner:
    """A Python layer without tops as a host step with one marker top: each forward
    calls the layer's reshape and forward (with no tops) and writes the number of calls
    so far into the marker, which the Net keeps as the state of an
    :class:`~symnet.ops.python.EffectCount`. Caffe runs such a layer's forward at every
    net forward and never its backward (it contributes to no loss)."""

    def __init__(self, runner):
        self.runner, self.name = runner, runner.name
        self.bottom_shapes, self.params = runner.bottom_shapes, runner.params
        self.top_shapes = [(1,)]
        self.top_tensors = []
        self.calls = 0

    @property
    def n_args(self):
        return self.runner.n_args

    def check_arg_shapes(self, shapes):
        self.runner.check_arg_shapes(shapes)

    def differentiable(self, i):
        return False

    def forward_into(self, bottom_arrays, top_arrays):
        self.runner.forward_into(bottom_arrays, [])
        self.calls += 1
        top_arrays[0][...] = self.calls

    def forward_arrays(self, arrays):
        out = np.zeros(1, dtype=np.float32)
        self.forward_into([np.asarray(a, dtype=np.float32)
                           for a in arrays[:len(self.bottom_shapes)]], [out])
        return [out]
