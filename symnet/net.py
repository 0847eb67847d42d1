"""Net: a Caffe network built as one symnet graph, compiled by codegen, with pycaffe's
API on Caffe-compatible blobs.

Every layer's tops are graph tensors ("versions" of a blob: an in-place layer makes a
new version of its bottom's blob). Forward stores every version (the last one in the
blob's ``data``, earlier ones privately), so backward starts from stored values and
only recomputes work inside a layer. Fusion still crosses layer boundaries: a fused
kernel writes the layer outputs it passes through as extra outputs.
"""
from __future__ import annotations

import collections
import importlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
from networkx import descendants as nx_descendants

from . import fillers
from . import functions as F
from . import ops
from .autodiff import vjp
from .function import Function, default_backend
from .errors import StateError
from .graph import Graph, Tensor, graph_scope
from . import data as data_sources
from . import pylayer
from .formats import prototxt, upgrade
from .ops.python import EffectCount
from .layers.shape import SelectedCountError
from .formats.weights import (check_hdf5_layers, copy_trained_layers, save_net,
                              write_trained_layers)
from .layers import load_plugins, registry
from .runtime.blob import Blob
from .runtime.memory import SyncedMemory
from .runtime.prefetch import Prefetcher

TRAIN, TEST = 0, 1


def fold_batch_norm_enabled() -> bool:
    """Whether whole-net forwards that no backward follows fold BatchNorm (and Scale)
    into the Convolution or InnerProduct before it: on unless SYMNET_FOLD_BN=0."""
    return os.environ.get("SYMNET_FOLD_BN", "1").strip().lower() not in ("0", "off", "false",
                                                                         "no")


_PHASES = {TRAIN: "TRAIN", TEST: "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}


class BlobParam(ops.Param):
    """A Param whose value is a Blob's data (so net surgery and solvers act in place)."""

    def __init__(self, name, blob):
        self.blob = blob
        super().__init__(name, blob.shape, blob.data)

    def get_value(self):
        return self.blob.data

    # what get_memory returns, as an attribute path (compiled calls fetch every param's
    # memory at each call with one operator.attrgetter)
    memory_attr = "blob.data_mem"

    def get_memory(self):
        return self.blob.data_mem

    def set_value(self, array, shape):
        if hasattr(self, "blob"):
            self.blob.data[...] = array


@dataclass
class Layer:
    """pycaffe's view of a layer: ``type`` and learnable ``blobs``."""
    name: str
    type: str
    bottoms: list
    tops: list
    blobs: list = field(default_factory=list)
    lr_mult: list = field(default_factory=list)
    decay_mult: list = field(default_factory=list)
    loss_weights: list = field(default_factory=list)
    source: object = None          # the LayerParameter
    top_tensors: list = field(default_factory=list, repr=False)
    bottom_tensors: list = field(default_factory=list, repr=False)   # as they came in
    params: list = field(default_factory=list, repr=False)     # Param Tensors
    updates: list = field(default_factory=list, repr=False)    # (Param Tensor, value)


def _h5py(what):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{what} needs h5py: pip install 'symnet[data]'") from None
    return h5py


def memory_limit() -> int:
    """The most bytes one blob may take: ``$SYMNET_MAX_BLOB_BYTES``, else the machine's
    physical memory."""
    env = os.environ.get("SYMNET_MAX_BLOB_BYTES", "").strip()
    if env:
        return int(env)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _check_size(where, what, shape):
    """A blob larger than memory_limit() is a LayerError naming the layer, the shape and
    the bytes, before anything is allocated."""
    need = 4 * math.prod(int(d) for d in shape)
    limit = memory_limit()
    if need > limit:
        raise registry.LayerError(
            f"{where}: {what} of shape {tuple(shape)} needs {need:,} bytes, "
            f"more than the limit of {limit:,} (the machine's memory, or "
            "SYMNET_MAX_BLOB_BYTES)")


def state_meets_rule(rule, phase, level, stages) -> bool:
    """Caffe's NetStateRule: phase, min_level, max_level, stage, not_stage."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(lp, phase, level, stages) -> bool:
    included = len(lp.include) == 0
    for rule in lp.exclude:
        if state_meets_rule(rule, phase, level, stages):
            included = False
    for rule in lp.include:
        if state_meets_rule(rule, phase, level, stages):
            included = True
    return included


def _is_repeated(fd) -> bool:
    rep = getattr(fd, "is_repeated", None)     # protobuf >= 5; ``label`` before
    return rep if rep is not None else fd.label == fd.LABEL_REPEATED


def message_kwargs(msg) -> dict:
    """A layer's parameter message as keyword arguments: the fields set in the file
    (the layer function's own defaults are Caffe's); enums by name, sub-messages as
    dicts, repeated fields as lists."""
    out = {}
    for fd in msg.DESCRIPTOR.fields:
        name = fd.name
        if _is_repeated(fd):
            values = list(getattr(msg, name))
            if fd.message_type is not None:
                values = [message_kwargs(v) for v in values]
            elif fd.enum_type is not None:
                values = [fd.enum_type.values_by_number[v].name for v in values]
            out[name] = values
            continue
        if not msg.HasField(name):
            continue
        value = getattr(msg, name)
        if fd.message_type is not None:
            value = message_kwargs(value)
        elif fd.enum_type is not None:
            value = fd.enum_type.values_by_number[value].name
        out[name] = value
    return out


class Net:
    """A Caffe network. ``Net(model, phase)``, ``Net(model, weights, phase)`` or keyword
    arguments ``phase=, weights=, stages=, level=, backend=, layer_modules=``;
    ``input_shapes={blob: shape}`` stands in Input layers for data layers."""

    def __init__(self, model, *args, phase=None, weights=None, stages=(), level=0,
                 backend=None, layer_modules=(), input_shapes=None):
        args = list(args)
        if args and isinstance(args[0], (str, os.PathLike)):
            weights = args.pop(0)
        if args:
            phase = args.pop(0)
        if args:
            raise TypeError(f"Net: unexpected positional arguments {args}")
        if phase is None:
            raise TypeError("Net: phase is required (symnet.TRAIN or symnet.TEST)")
        if phase not in _PHASES:
            raise ValueError(f"Net: phase {phase!r}, expected TRAIN (0) or TEST (1)")
        load_plugins()
        for mod in layer_modules:
            importlib.import_module(mod)
        self.phase = TRAIN if _PHASES[phase] == "TRAIN" else TEST
        self.stages, self.level = list(stages), int(level)
        self.backend = backend or default_backend()
        if isinstance(model, (str, os.PathLike)) and os.path.exists(model):
            self.filename = os.fspath(model)
            param = prototxt.parse_net(self.filename)
        elif isinstance(model, str) and "{" in model:
            self.filename = "<string>"
            param = prototxt.parse_net(model, filename="<string>")
        elif isinstance(model, (str, os.PathLike)):
            raise FileNotFoundError(f"Net: no prototxt file '{model}'")
        else:
            self.filename = "<message>"
            param = model
        self.param, self.upgrade_notes = upgrade.upgrade_net(param)
        self.name = self.param.name
        self._input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        # options a rebuild gives a layer (a Filter's count of selected rows)
        self._layer_options = {}
        self._param_blobs = {}
        self.blobs = collections.OrderedDict()
        self.iteration = 0
        self._timed = False
        self._hooks = {k: [] for k in ("before_forward", "after_forward", "before_backward",
                                       "after_backward")}
        self._build()
        if weights is not None:
            self.copy_from(weights)

    # ------------------------------------------------------------------ building
    def _build(self):
        p = self.param
        stages = list(self.stages) + list(p.state.stage)
        level = self.level or p.state.level
        self.graph = Graph()
        self._layers, self._layer_names = [], []
        self.params = collections.OrderedDict()
        self.inputs = []
        self._built_shapes = {}      # input blob -> the shape the graph was built for
        self._current = {}           # blob name -> latest version (Tensor)
        self._where_stored = {}      # tensor id -> where _store finds its memory
        self._version_ids = set()
        self._shared = {}            # param share name -> (Tensor, Blob)
        self._fns = {}
        self.force_backward = bool(p.force_backward)
        # a rebuild (reshape) keeps each data layer's source and its position, as
        # Caffe's Reshape does
        self._old_feeders = {layer.name: (layer, feeder)
                             for layer, feeder in getattr(self, "_feeders", [])}
        self._feeders = []
        old_blobs, self.blobs = self.blobs, collections.OrderedDict()
        self._old_blobs = old_blobs
        try:
            with graph_scope(self.graph):
                self._counter = F.input("__iteration", ())
                for lp in p.layer:
                    if layer_included(lp, self.phase, level, stages):
                        self._build_layer(lp)
        finally:
            kept = {id(f) for _, f in self._feeders}
            for _, feeder in self._old_feeders.values():
                if id(feeder) not in kept:
                    feeder.close()
            del self._old_feeders
        # Caffe's rule: each layer takes its bottoms out of the available blobs and puts
        # its tops in; what is left is the output, in name order (Caffe keeps a
        # std::set<string>). A blob an in-place layer ends on is an output.
        available = set()
        for l in self._layers:
            available.difference_update(l.bottoms)
            available.update(l.tops)
        self.outputs = sorted(available)
        del self._old_blobs

    def _where(self, lp):
        return f"layer '{lp.name}' ({lp.type}) in {self.filename}"

    def _blob(self, name, shape):
        blob = self.blobs.get(name) or self._old_blobs.get(name) or Blob(shape, name)
        blob.reshape(shape)
        self.blobs[name] = blob
        return blob

    def _add_version(self, layer, name, t):
        if t.id in self._version_ids or isinstance(t.op, (ops.Param, ops.Constant)):
            # a layer passing a bottom through (Dropout at test, Split) makes a new version
            t = F.elementwise(lambda a: a, t, label="identity")
        self._version_ids.add(t.id)
        t.name = name
        layer.top_tensors.append(t)
        self._current[name] = t
        return self._blob(name, t.shape)

    def _build_layer(self, lp):
        if lp.type == "Input" or any(t in self._input_shapes for t in lp.top):
            self._build_input(lp)
            return
        if data_sources.is_data_layer(lp.type):
            self._build_data(lp)
            return
        if lp.type == "Python":
            obj = pylayer.load_layer_object(lp.python_param.module, lp.python_param.layer,
                                            self._base_dir(), self._where(lp))
            if getattr(obj, "layer_type", None) is None:
                self._build_python(lp, obj)
                return
            # a symbolic layer named from prototxt: compiled, not called
            spec = registry.get(obj.layer_type)
            extra = pylayer.parse_param_str(lp.python_param.param_str, self._where(lp))
            registry.check_options(spec, extra, self._where(lp))
        else:
            spec = registry.get(lp.type)
            extra = {}
        raw = [self._current.get(b) for b in lp.bottom]
        bottoms = self._bottoms(lp)
        kwargs = {}
        for pname in spec.params:
            if pname in lp.DESCRIPTOR.fields_by_name:
                kwargs.update(message_kwargs(getattr(lp, pname)))
        kwargs.update(extra)
        kwargs.update(self._layer_options.get(lp.name, {}))
        specs = [message_kwargs(ps) for ps in lp.param]
        layer = Layer(lp.name, lp.type, list(lp.bottom), list(lp.top), source=lp,
                      bottom_tensors=raw)
        ctx = registry.LayerContext(lp.name, lp.type, _PHASES[self.phase], len(lp.top), specs,
                                    lambda c, i, shape, filler: self._make_param(
                                        layer, c, i, shape, filler),
                                    counter=self._counter)
        ctx.where = self._where(lp)
        self.graph.layer_tag = lp.name
        try:
            tops = registry.call(spec, ctx, bottoms, kwargs)
        finally:
            self.graph.layer_tag = None
        if len(tops) < len(lp.top):
            raise registry.LayerError(f"{self._where(lp)}: the layer gives {len(tops)} tops, "
                                      f"the prototxt names {len(lp.top)}")
        layer.lr_mult = [d.lr_mult for d in ctx.params]
        layer.decay_mult = [d.decay_mult for d in ctx.params]
        layer.params = [d.tensor for d in ctx.params]
        layer.updates = list(ctx.updates)
        weights = list(lp.loss_weight) or [1.0 if (spec.loss and k == 0) else 0.0
                                           for k in range(len(lp.top))]
        layer.loss_weights = weights + [0.0] * (len(lp.top) - len(weights))
        for name, t in zip(lp.top, tops):
            _check_size(self._where(lp), f"top '{name}'", t.shape)
        for k, (name, t) in enumerate(zip(lp.top, tops)):
            blob = self._add_version(layer, name, t)
            if layer.loss_weights[k]:
                blob.diff[...] = layer.loss_weights[k]
        self._layers.append(layer)
        self._layer_names.append(lp.name)
        if layer.blobs:
            self.params[lp.name] = layer.blobs

    def _build_input(self, lp):
        layer = Layer(lp.name, lp.type, [], list(lp.top), source=lp)
        for name, shape in zip(lp.top, self._input_layer_shapes(lp)):
            _check_size(self._where(lp), f"top '{name}'", shape)
            self._add_version(layer, name, F.input(name, shape))
            self.inputs.append(name)
            self._built_shapes[name] = tuple(shape)
        self._layers.append(layer)
        self._layer_names.append(lp.name)

    def _base_dir(self):
        return os.path.dirname(os.path.abspath(self.filename)) \
            if os.path.exists(self.filename) else os.getcwd()

    def _bottoms(self, lp):
        out = []
        for j, b in enumerate(lp.bottom):
            if b not in self._current:
                raise registry.LayerError(
                    f"{self._where(lp)}: bottom '{b}' is not produced by an earlier layer; "
                    f"known blobs: {', '.join(self._current) or 'none'}")
            t = self._current[b]
            if j < len(lp.propagate_down) and not lp.propagate_down[j]:
                t = F.stop_gradient(t)
            out.append(t)
        return out

    def _build_python(self, lp, cls):
        """A Caffe Python layer: a host call in the graph (a fusion boundary)."""
        raw = [self._current.get(b) for b in lp.bottom]
        bottoms = self._bottoms(lp)
        runner = pylayer.PythonLayerRunner(cls, lp, self.phase, [b.shape for b in bottoms],
                                           self._where(lp))
        layer = Layer(lp.name, lp.type, list(lp.bottom), list(lp.top), source=lp,
                      bottom_tensors=raw)
        specs = [message_kwargs(ps) for ps in lp.param]
        params = []
        for i, blob in enumerate(runner.params):
            params.append(self.graph.add(BlobParam(f"{lp.name}_{i}", blob), [],
                                         name=f"{lp.name}_{i}"))
            layer.blobs.append(blob)
            layer.lr_mult.append(specs[i].get("lr_mult", 1.0) if i < len(specs) else 1.0)
            layer.decay_mult.append(specs[i].get("decay_mult", 1.0) if i < len(specs) else 1.0)
        layer.params = params
        self.graph.layer_tag = lp.name
        tops = [self.graph.add(ops.PythonTop(runner, k), bottoms + params)
                for k in range(len(lp.top))]
        if not lp.top:
            # no tops: a marker the forward computes, kept as the layer's call count
            effect = pylayer.EffectRunner(runner)
            marker = self.graph.add(ops.PythonTop(effect, 0), bottoms + params)
            effect.top_tensors = [marker]
            count = self.graph.add(EffectCount(f"{lp.name}_calls"), [],
                                   name=f"{lp.name}_calls")
            layer.updates = [(count, marker)]
        self.graph.layer_tag = None
        runner.top_tensors = tops
        weights = list(lp.loss_weight) or [0.0] * len(lp.top)
        layer.loss_weights = weights + [0.0] * (len(lp.top) - len(weights))
        for k, (name, t) in enumerate(zip(lp.top, tops)):
            t.name = name
            self._version_ids.add(t.id)
            layer.top_tensors.append(t)
            self._current[name] = t
            blob = self._blob(name, t.shape)
            if layer.loss_weights[k]:
                blob.diff[...] = layer.loss_weights[k]
        layer.runner = runner
        self._layers.append(layer)
        self._layer_names.append(lp.name)
        if layer.blobs:
            self.params[lp.name] = layer.blobs

    def _build_data(self, lp):
        """A data layer: its source (run on a prefetch thread) fills the tops, which are
        inputs of the compiled graph, before each forward."""
        base = self._base_dir()
        old = self._old_feeders.get(lp.name)
        if old is not None and old[0].source == lp:
            source, feeder = old[0].data_source, old[1]
        else:
            feeder = None
            try:
                source = data_sources.create(lp, _PHASES[self.phase], base)
            except registry.LayerError:
                raise
            except Exception as e:
                raise registry.LayerError(f"{self._where(lp)}: {e}") from e
        shapes = source.top_shapes()
        if len(shapes) < len(lp.top):
            raise registry.LayerError(f"{self._where(lp)}: the source gives {len(shapes)} "
                                      f"tops, the prototxt names {len(lp.top)}")
        layer = Layer(lp.name, lp.type, [], list(lp.top), source=lp)
        fresh = [name not in self._old_blobs for name in lp.top]
        for name, shape in zip(lp.top, shapes):
            _check_size(self._where(lp), f"top '{name}'", shape)
        for name, shape in zip(lp.top, shapes):
            self._add_version(layer, name, F.input(name, shape))
        layer.data_source = source
        if feeder is None:
            feeder = Prefetcher(source, data_sources.prefetch_depth(lp),
                                name=f"{lp.name} ({lp.type})")
        # Caffe's DummyData fills its constant tops once, in LayerSetUp (a rebuild keeps
        # what the blobs hold); _feed_data never writes them
        for i, value in feeder.constant_tops().items():
            if i < len(lp.top) and fresh[i]:
                self.blobs[lp.top[i]].data[...] = value
        self._feeders.append((layer, feeder))
        self._layers.append(layer)
        self._layer_names.append(lp.name)

    def _feed_data(self, given):
        for layer, feeder in self._feeders:
            if all(t in given for t in layer.tops):
                continue
            batch = feeder.get(skip_constant=True)
            for name, array in zip(layer.tops, batch):
                if name not in given and array is not None:
                    self.blobs[name].data[...] = array

    def set_input_arrays(self, data, labels):
        """Feed a MemoryData layer (pycaffe's ``net.set_input_arrays``)."""
        for layer, feeder in self._feeders:
            if layer.type == "MemoryData":
                with feeder.paused() as source:
                    source.set_arrays(data, labels)
                return
        raise TypeError("set_input_arrays: the net has no MemoryData layer")

    def close(self):
        """Stop the data layers' prefetch threads (also done when the Net is released);
        a closed net refuses to run."""
        self._stop_feeders()
        self._closed = True

    def _stop_feeders(self):
        for _, feeder in getattr(self, "_feeders", []):
            feeder.close()
        self._feeders = []

    def _check_open(self, what):
        if getattr(self, "_closed", False):
            raise StateError(f"net '{self.name}': {what}() after close(); the net's data "
                             "layers are stopped (build a new Net)")

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: nothing left to stop
            pass

    def _input_layer_shapes(self, lp):
        tops = list(lp.top)
        if all(t in self._input_shapes for t in tops):
            return [self._input_shapes[t] for t in tops]
        if lp.type != "Input":
            missing = [t for t in tops if t not in self._input_shapes]
            raise registry.LayerError(f"{self._where(lp)}: give the shapes of tops {missing} "
                                      "with input_shapes= to stand in this data layer")
        shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
        if len(shapes) == 1 and len(tops) > 1:
            shapes = shapes * len(tops)
        if len(shapes) != len(tops):
            raise registry.LayerError(f"{self._where(lp)}: input_param has {len(shapes)} "
                                      f"shapes for {len(tops)} tops")
        return shapes

    def _make_param(self, layer, ctx, index, shape, filler):
        share = ctx.param_specs[index].get("name", "") if index < len(ctx.param_specs) else ""
        if share and share in self._shared:
            t, blob = self._shared[share]
            if t.shape != shape:
                raise registry.LayerError(
                    f"layer '{ctx.name}' ({ctx.type}): param '{share}' is shared with shape "
                    f"{t.shape}, this layer needs {shape}")
            layer.blobs.append(blob)
            return t
        # by position as well as name: layers of the same name keep their own blobs,
        # as in Caffe; a rebuild (reshape) finds each layer's blobs again
        key = (len(self._layers), ctx.name, index)
        blob = self._param_blobs.get(key)
        if blob is None or blob.shape != shape:
            _check_size(ctx.where or f"layer '{ctx.name}'", f"param blob {index}", shape)
            blob = Blob(shape, f"{ctx.name}[{index}]")
            blob.data[...] = fillers.get(filler)(shape, fillers.rng())
            self._param_blobs[key] = blob
        t = self.graph.add(BlobParam(f"{ctx.name}_{index}", blob), [],
                           name=f"{ctx.name}_{index}")
        if share:
            self._shared[share] = (t, blob)
        layer.blobs.append(blob)
        return t

    # ------------------------------------------------------------------ storage
    def _is_final(self, t):
        cur = self._current.get(t.name)
        return cur is not None and cur.id == t.id

    def _store(self, t):
        """The memory holding version t: its blob's data if it is the blob's latest
        version, else a private memory (an in-place layer's earlier value). Memories stay
        where the compiled calls left them (on the device for the CUDA backends)."""
        where = self._where_stored.get(t.id)
        if where is None:           # fixed once the net is built: looked up once
            where = self._where_stored[t.id] = (
                "counter" if t.id == self._counter.id else
                "blob" if self._is_final(t) else "private", t.name, t.shape)
        kind, name, shape = where
        if kind == "blob":
            return self.blobs[name].data_mem
        if kind == "counter":
            mem = self._private.get(t.id)
            if mem is None:
                mem = self._private[t.id] = SyncedMemory(())
                mem.host_write()[...] = self._counter_value
            elif mem.host_read() != self._counter_value:
                mem.host_write()[...] = self._counter_value
            return mem
        mem = self._private.get(t.id)
        if mem is None or mem.shape != shape:
            mem = self._private[t.id] = SyncedMemory(shape)
        return mem

    def _update_store(self, k, shape):
        """A private memory for the k-th state update's new value."""
        key = ("update", k)
        mem = self._private.get(key)
        if mem is None or mem.shape != tuple(shape):
            mem = self._private[key] = SyncedMemory(shape)
        return mem

    @property
    def _private(self):
        return self.__dict__.setdefault("_private_arrays", {})

    def _layer_index(self, name, default):
        if name is None:
            return default
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise KeyError(f"no layer named '{name}' in the net") from None

    def _compile(self, key, outputs, cut, extra=()):
        """A Function computing ``outputs`` from the stored values of the ``cut``
        tensors they need, then the ``extra`` inputs they need (cotangents). Returns
        (Function, fed cut tensors, indices of the extra inputs used), cached by key."""
        fold = key[-1:] == ("last versions",) and fold_batch_norm_enabled()
        if fold:
            key = key + ("folded",)
        if key in self._fns:
            return self._fns[key]
        if fold:
            outputs = self._fold_batch_norm(outputs)
        needed = set(self.graph.ancestors([t.id for t in outputs]))
        feeds = [t for t in cut if t.id in needed]
        used = [i for i, t in enumerate(extra) if t.id in needed]
        with graph_scope(self.graph):
            replace = {t: F.input(f"{t.name}_stored", t.shape) for t in feeds
                       if not isinstance(t.op, ops.Input)}
            new_out = self.graph.clone(outputs, replace) if replace else list(outputs)
        inputs = [replace.get(t, t) for t in feeds] + [extra[i] for i in used]
        fn = Function(inputs, new_out, backend=self.backend, name=f"{self.name or 'net'}_{key[0]}")
        self._fns[key] = (fn, feeds, used)
        return self._fns[key]

    # ------------------------------------------------------------------ BatchNorm folding
    def _fold_batch_norm(self, outputs):
        """``outputs`` of a whole-net forward that no backward follows, with each chain
        found by ``_fold_chains`` (Convolution or InnerProduct, BatchNorm with global
        statistics, optionally Scale) computed as one product with folded weights:

            s  = gamma / sqrt(var_sum * f + eps),   f = 1 / scale_factor (0 if it is 0)
            W' = W * s[c]                           (c: the output channel)
            b' = (b - mean_sum * f) * s + beta

        (gamma 1 and beta 0 without Scale or its bias, b 0 without a bias term): Caffe's
        BatchNorm and Scale formulas rearranged. W' and b' depend on params only, so the
        plan computes them only when a weight changes (codegen/plan.py, ``param_derived``).
        The chain's earlier values are neither stored nor visible, so nothing else changes."""
        chains = self._fold_chains()
        self._folded = [tuple(l.name for l in c if l is not None) for c in chains]
        if not chains:
            return outputs
        # graph.clone in one topological pass, each chain's last value replaced by its
        # folded product as it comes, so a chain reading an earlier one's (the next
        # convolution after a ReLU) reads the folded values, never the original chain
        ends = {(sc or bn).top_tensors[0].id: (conv, bn, sc) for conv, bn, sc in chains}

        def folded(n, mapping):
            return self._folded_product(*ends[n], mapping) if n in ends else None
        with graph_scope(self.graph):
            return self.graph.clone(outputs, {}, substitute=folded)

    def _fold_chains(self):
        """(product layer, BatchNorm layer, Scale layer or None) for each chain that can
        be folded: the product's top read by the BatchNorm alone, the BatchNorm using
        global statistics and its top read by the Scale alone (else the chain ends at the
        BatchNorm), neither intermediate value the last version of its blob (a blob's
        last version is what the net stores and shows; earlier versions of an in-place
        chain are not visible)."""
        readers = collections.defaultdict(list)
        for l in self._layers:
            for t in l.bottom_tensors:
                if t is not None:
                    readers[t.id].append(l)

        def only_reader(t):
            found = readers.get(t.id, [])
            return found[0] if len(found) == 1 and not self._is_final(t) else None

        chains = []
        for conv in self._layers:
            if not self._foldable_product(conv):
                continue
            t1 = conv.top_tensors[0]
            bn = only_reader(t1)
            if bn is None or bn.type != "BatchNorm" or bn.updates or len(bn.blobs) != 3 or \
                    len(bn.bottom_tensors) != 1 or len(bn.top_tensors) != 1:
                continue
            t2 = bn.top_tensors[0]
            sc = only_reader(t2)
            if sc is not None and not self._foldable_scale(sc, t2):
                sc = None
            chains.append((conv, bn, sc))
        return chains

    @staticmethod
    def _foldable_product(layer):
        if len(layer.top_tensors) != 1 or len(layer.bottom_tensors) != 1 or \
                not 1 <= len(layer.params) <= 2:
            return False
        t, w = layer.top_tensors[0], layer.params[0]
        if layer.type == "Convolution":
            return t.ndim == 4 and w.ndim == 4 and w.shape[0] == t.shape[1]
        if layer.type == "InnerProduct":
            p = layer.source.inner_product_param
            c = w.shape[1] if p.transpose else w.shape[0]
            return t.ndim == 2 and p.axis in (1, -1) and w.ndim == 2 and c == t.shape[1]
        return False

    @staticmethod
    def _foldable_scale(layer, x):
        """A Scale of its one bottom by a learned per-channel (axis 1) blob."""
        if layer.type != "Scale" or len(layer.bottom_tensors) != 1 or \
                len(layer.top_tensors) != 1 or not 1 <= len(layer.params) <= 2:
            return False
        p = layer.source.scale_param
        return p.axis in (1, 1 - x.ndim) and \
            all(t.shape == (x.shape[1],) for t in layer.params)

    def _folded_product(self, conv, bn, sc, mapping):
        """The chain's last value as conv's product with W' and b' (see
        ``_fold_batch_norm``), built from the product layer's own graph, reading the
        values ``mapping`` (node id -> node id) gives for the nodes before it."""
        t1 = conv.top_tensors[0]
        g = self.graph
        own = set(g.ancestors([t1.id]))
        inside = set()
        for p in conv.params:
            inside |= own & (set(nx_descendants(g.nx, p.id)) | {p.id})
        before = {Tensor(g, a): Tensor(g, b) for a, b in mapping.items()
                  if a in own and a not in inside}
        c = t1.shape[1]
        mean_sum, var_sum, factor = bn.params
        eps = float(bn.source.batch_norm_param.eps)
        nonzero = F.ne(factor, 0.0)
        inv = F.where(nonzero, 1.0 / F.where(nonzero, factor, 1.0), 0.0)
        scale = 1.0 / F.sqrt(var_sum * inv + eps)
        shift = -(mean_sum * inv)
        if sc is not None:
            scale = scale * sc.params[0]
        if len(conv.params) == 2:
            shift = shift + conv.params[1]
        shift = shift * scale
        if sc is not None and len(sc.params) == 2:
            shift = shift + sc.params[1]
        w = conv.params[0]
        if conv.type == "InnerProduct" and conv.source.inner_product_param.transpose:
            s_view = F.reshape(scale, (1, c))
        else:
            s_view = F.reshape(scale, (c,) + (1,) * (w.ndim - 1))
        replace = dict(before)
        replace[w] = w * s_view
        if len(conv.params) == 2:
            replace[conv.params[1]] = shift
            return self.graph.clone([t1], replace)[0]
        (y,) = self.graph.clone([t1], replace)
        return y + F.reshape(shift, (1, c) + (1,) * (t1.ndim - 2))

    def _forward_parts(self, s, e):
        """Outputs (blob versions, then state updates) of layers s..e and the stored
        values they start from (fixed once the net is built: found once)."""
        key = ("parts", s, e)
        parts = self._where_stored.get(key)
        if parts is None:
            parts = self._where_stored[key] = self._find_forward_parts(s, e)
        return parts

    def _find_forward_parts(self, s, e):
        rng = self._layers[s:e + 1]
        made = {t.id for l in rng for t in l.top_tensors}
        updates = [(p, v) for l in rng for p, v in l.updates]
        outputs = [t for l in rng for t in l.top_tensors if not isinstance(t.op, ops.Input)]
        cut = [t for t in self._all_versions()
               if t.id not in made or isinstance(t.op, ops.Input)]
        return outputs + [v for _, v in updates], updates, cut

    def _backward_fn(self):
        """(Function, fed stored tensors, the extra inputs it reads: sink diffs as
        cotangents, then param diffs), or None when nothing needs backward. Its outputs
        are the bottom diffs, then each learned param's diff plus its gradient (Caffe
        accumulates param diffs)."""
        sinks, firsts, params = self._backward_parts()
        if not sinks or not (firsts or params):
            return None
        if "backward" not in self._fns:
            with graph_scope(self.graph):
                cots = [F.input(f"{t.name}_diff", t.shape) for t in sinks]
                diffs = [F.input(f"{blob.name}_diff", t.shape) for t, blob in params]
                grads = vjp(sinks, cots, [t for _, t in firsts] + [t for t, _ in params])
                grads = grads[:len(firsts)] + [
                    F.add(d, g) for d, g in zip(diffs, grads[len(firsts):])]
            self._compile("backward", grads, self._all_versions(), extra=cots + diffs)
        fn, feeds, used = self._fns["backward"]
        extra = [self.blobs[t.name].diff_mem for t in sinks] + \
            [blob.diff_mem for _, blob in params]
        return fn, feeds, [extra[i] for i in used]

    def functions(self):
        """The whole net's forward and backward Functions (backward None when nothing
        needs it), compiled for the net's backend without running them."""
        key, outputs, _, cut = self._run_parts(0, len(self._layers) - 1)
        fwd = self._compile(key, outputs, cut)[0] if outputs else None
        bwd = self._backward_fn()
        return fwd, (bwd[0] if bwd else None)

    def _all_versions(self):
        return [t for l in self._layers for t in l.top_tensors] + [self._counter]

    # ------------------------------------------------------------------ forward
    def _set_inputs(self, kwargs, what="forward"):
        """Caffe's Forward reshapes every layer first: input blobs reshaped since the net
        was built (``net.blobs['data'].reshape(...)``) re-size the whole net here. Then
        keyword arrays are written into their blobs."""
        blobs = self.blobs
        for b, shape in self._built_shapes.items():
            if blobs[b].shape != shape:
                self.reshape()
                blobs = self.blobs
                break
        for name, array in kwargs.items():
            blob = blobs.get(name)
            if blob is None:
                raise KeyError(f"{what}: no blob named '{name}'")
            shape = array.shape if type(array) is np.ndarray else np.shape(array)
            if blob.shape != shape:
                raise ValueError(f"{what}: '{name}' got shape {shape}, the blob has "
                                 f"{blob.shape}; reshape the blob first "
                                 f"(net.blobs['{name}'].reshape(...))")
            # what ``blob.data[...] = array`` does, without a view kept for a moment
            blob.data_mem.host_write()[...] = array

    def _forward_outs(self, outputs, updates):
        n_blob = len(outputs) - len(updates)
        return [self._store(t) for t in outputs[:n_blob]] + \
            [self._update_store(k, v.shape) for k, (_, v) in enumerate(updates)]

    def _forward_done(self, updates, blobs, end=None):
        """updates: (param Tensor, memory of its new value) pairs."""
        for param, mem in updates or ():
            param.op.blob.data_mem.copy_from(mem)
        self._last_counter = self.iteration
        if self.phase == TRAIN:
            self.iteration += 1
        # pycaffe's contract: the net's outputs, or the tops of ``end`` when it is given
        if end is None and not blobs:
            names = self.outputs            # distinct names (a sorted set)
        else:
            first = list(self.outputs) if end is None else list(self._layers[end].tops)
            names = dict.fromkeys(first + [b for b in (blobs or []) if b not in first])
        net_blobs = self.blobs
        return {b: net_blobs[b].data for b in names}

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run layers start..end (names, inclusive); keyword arrays set input blobs.
        Returns {blob: data} for the outputs, or the tops of ``end`` when it is given (and
        the blobs named in ``blobs``)."""
        self._check_open("forward")
        self._set_inputs(kwargs)
        hooks = self._hooks
        if start is None and end is None and not hooks["before_forward"] and \
                not hooks["after_forward"]:
            # the whole net as one call (what ``run`` below does for it)
            if self._feeders:
                self._feed_data(kwargs)
            self._counter_value = self.iteration
            return self._forward_done(self._refitting(self._forward_all), blobs)
        s = self._layer_index(start, 0)
        e = self._layer_index(end, len(self._layers) - 1)
        if s == 0:
            self._feed_data(kwargs)
        self._counter_value = self.iteration

        def run():
            s_, e_ = self._layer_index(start, 0), self._layer_index(end, len(self._layers) - 1)
            if not (self._hooks["before_forward"] or self._hooks["after_forward"]):
                return self._forward_range(s_, e_), e_
            updates = []
            for i in range(s_, e_ + 1):     # layer by layer, so hooks see each layer
                self._run_hooks("before_forward", i)
                updates += self._forward_range(i, i)
                self._run_hooks("after_forward", i)
            return updates, e_
        updates, e = self._refitting(run)
        return self._forward_done(updates, blobs, None if end is None else e)

    def _forward_all(self):
        return self._forward_range(0, len(self._layers) - 1)

    def _refitting(self, run):
        """``run()``, repeated after re-sizing the net when a Filter's selector picked
        another number of rows than its tops were built for (Caffe's Filter re-shapes
        its tops at every forward; symnet's graph has static shapes, so the net is
        rebuilt with the new count, its modules coming from the cache, and the run
        repeated on what the blobs hold: data is not fed again). State updates are
        applied only after a run succeeds."""
        tried = set()
        while True:
            try:
                return run()
            except SelectedCountError as err:
                key = (err.layer, err.count)
                if key in tried:
                    raise
                tried.add(key)
                self._layer_options.setdefault(err.layer, {})["count"] = err.count
                self.reshape()

    def _run_parts(self, s, e):
        """(compile key, outputs, updates, cut) of a run of layers s..e. A run of the
        whole net that no backward can follow (no loss, no force_backward) stores only
        each blob's last version, as Caffe's one memory per blob holds: the values an
        in-place chain passes through stay inside the kernels (BatchNorm, Scale and
        ReLU after a convolution become its GEMM's epilogue with one store). Otherwise
        every version is kept, for backward."""
        outputs, updates, cut = self._forward_parts(s, e)
        if (s, e) != (0, len(self._layers) - 1) or not self._forward_only():
            return ("forward", s, e), outputs, updates, cut
        key = ("forward", s, e, "last versions")
        found = self._where_stored.get(key)
        if found is None:
            n_blob = len(outputs) - len(updates)
            kept = [t for t in outputs[:n_blob] if self._is_final(t)]
            found = self._where_stored[key] = (key, kept + outputs[n_blob:], updates, cut)
        return found

    def _forward_only(self):
        found = self._where_stored.get("forward only")
        if found is None:
            found = self._where_stored["forward only"] = not self._backward_parts()[0]
        return found

    def _forward_range(self, s, e):
        """Layers s..e as one compiled call; their state updates (param, memory)."""
        r = self._where_stored.get(("range", s, e))
        if r is None or r is True:
            # True: the whole net, whose Function depends on whether BatchNorm is folded
            if r is None and (s, e) == (0, len(self._layers) - 1) and \
                    self._forward_only() and self._fold_chains():
                r = self._where_stored[("range", s, e)] = True
            key = ("range", s, e) if r is None else ("range", s, e, fold_batch_norm_enabled())
            r = self._where_stored.get(key)
            if r is None:
                r = self._where_stored[key] = self._range_runner(s, e)
        fn, outputs, updates, out_names, feeds, feed_names, earlier, shown = r
        blobs = self.blobs
        if out_names is not None:
            outs = [blobs[n].data_mem for n in out_names]
        else:
            outs = [self._store(t) for t in outputs[:len(outputs) - len(updates)]]
        if updates:
            outs += [self._update_store(k, v.shape) for k, (_, v) in enumerate(updates)]
        if fn is None:
            return []
        for t in earlier:           # _take_blob_values
            self._store(t).copy_from(blobs[t.name].data_mem)
        if feed_names is not None:
            ins = [blobs[n].data_mem for n in feed_names]
        else:
            ins = [self._store(t) for t in feeds]
        fn(*ins, out=outs, timed=self._timed)
        for t in shown:             # _show_in_blobs
            blobs[t.name].data_mem.copy_from(self._store(t))
        if not updates:
            return []
        return list(zip([p for p, _ in updates], outs[len(outs) - len(updates):]))

    def _range_runner(self, s, e):
        """What a run of layers s..e does, found once (the net's build fixes it): the
        Function, outputs, updates, the blobs holding the outputs and feeds where each
        is its blob's latest version (else None: each looked up by ``_store``), and the
        earlier versions taken from and shown in the blobs."""
        key, outputs, updates, cut = self._run_parts(s, e)
        if not outputs:
            return None, outputs, updates, None, [], None, [], []
        fn, feeds, _ = self._compile(key, outputs, cut)
        blob_outputs = outputs[:len(outputs) - len(updates)]
        return (fn, outputs, updates, self._blob_names_of(blob_outputs), feeds,
                self._blob_names_of(feeds), self._earlier(feeds),
                self._earlier(list({t.name: t for t in blob_outputs}.values())))

    def _blob_names_of(self, tensors):
        """The blob names of ``tensors`` when each is stored as its blob's data, else
        None."""
        names = []
        for t in tensors:
            self._store(t)
            if self._where_stored[t.id][0] != "blob":
                return None
            names.append(t.name)
        return names

    # In Caffe the versions of a blob written in place share one memory. Here a blob's
    # memory holds its last version, and earlier ones (which backward reads) their own.
    # So that scripts see what Caffe shows, a run starts from what the blobs hold, and a
    # run ending before a blob's last version leaves the blob holding the newest value.
    def _take_blob_values(self, feeds):
        """Earlier versions a run reads take their blob's values (an input blob that an
        in-place layer overwrites, or a blob the user set before forward(start=...))."""
        for t in self._earlier(feeds):
            self._store(t).copy_from(self.blobs[t.name].data_mem)

    def _show_in_blobs(self, outputs):
        key = ("shown", tuple(t.id for t in outputs))
        shown = self._where_stored.get(key)
        if shown is None:       # each blob's newest version among outputs, found once
            shown = self._where_stored[key] = self._earlier(
                list({t.name: t for t in outputs}.values()))
        for t in shown:
            self.blobs[t.name].data_mem.copy_from(self._store(t))

    def _earlier(self, versions):
        """The versions among ``versions`` that are not their blob's last (kept in their
        own memory), of the blob's size; looked up once per list."""
        key = ("earlier", tuple(t.id for t in versions))
        found = self._where_stored.get(key)
        if found is None:
            found = self._where_stored[key] = [
                t for t in versions if t.id != self._counter.id and not self._is_final(t)
                and t.name in self.blobs
                and self.blobs[t.name].data_mem.size == math.prod(t.shape)]
        return found

    # pycaffe's hooks: callables of the layer index, run around each layer
    def before_forward(self, fn):
        self._hooks["before_forward"].append(fn)

    def after_forward(self, fn):
        self._hooks["after_forward"].append(fn)

    def before_backward(self, fn):
        self._hooks["before_backward"].append(fn)

    def after_backward(self, fn):
        self._hooks["after_backward"].append(fn)

    def _run_hooks(self, when, i):
        for fn in self._hooks[when]:
            fn(i)

    def _forward_backward_fn(self):
        """One Function for the whole net's forward and backward: its outputs are the
        forward's (blob versions, state updates), the bottom diffs, and each learned
        param's diff plus its gradient (the diffs are inputs too: Caffe accumulates).
        Values the backward needs from the forward (im2col columns, max-pooling's
        argmax) are computed once, and the kernels of both passes fuse as one plan."""
        key = ("forward_backward",)
        if key not in self._fns:
            outputs, updates, cut = self._forward_parts(0, len(self._layers) - 1)
            sinks, firsts, params = self._backward_parts()
            with graph_scope(self.graph):
                cots = [F.input(f"{t.name}_diff", t.shape) for t in sinks]
                diffs = [F.input(f"{blob.name}_diff", t.shape) for t, blob in params]
                grads = vjp(sinks, cots, [t for _, t in firsts] + [t for t, _ in params]) \
                    if sinks else []
                grads = grads[:len(firsts)] + [
                    F.add(d, g) for d, g in zip(diffs, grads[len(firsts):])]
            fn, feeds, used = self._compile(key, outputs + grads, cut, extra=cots + diffs)
            self._fns[key] = (fn, feeds, used, sinks, firsts, params, updates, len(cots))
        return self._fns[key]

    def forward_backward(self, blobs=None, **kwargs):
        """Caffe's ForwardBackward as one compiled plan: forward() then backward() in
        effect, the loss's and outputs' diffs as set before the call. Returns the
        forward's {blob: data}."""
        self._check_open("forward_backward")
        if not self._backward_parts()[0]:
            return self.forward(blobs, **kwargs)
        self._set_inputs(kwargs)
        self._feed_data(kwargs)
        if not any(l.type == "Filter" for l in self._layers):
            return self._forward_backward_run(blobs)
        # a Filter re-sizing the net mid-run: the param diffs go back to their values
        # before the run (the plan adds the gradients into them), then it is repeated
        diffs = [(blob, blob.diff.copy()) for blobs_ in self.params.values()
                 for blob in blobs_]

        def run():
            try:
                return self._forward_backward_run(blobs)
            except SelectedCountError:
                for blob, saved in diffs:
                    blob.diff[...] = saved
                raise
        return self._refitting(run)

    def _forward_backward_run(self, blobs):
        fn, feeds, used, sinks, firsts, params, updates, n_cots = self._forward_backward_fn()
        outputs = self._forward_parts(0, len(self._layers) - 1)[0]
        self._counter_value = self.iteration
        outs = self._forward_outs(outputs, updates)
        extra = [self.blobs[t.name].diff_mem for t in sinks] + \
            [blob.diff_mem for _, blob in params]
        self._take_blob_values(feeds)
        arrays = [self._store(t) for t in feeds] + [extra[i] for i in used]
        outs += [self.blobs[name].diff_mem for name, _ in firsts] + \
            [blob.diff_mem for _, blob in params]
        fn(*arrays, out=outs, timed=self._timed)
        n_fwd = len(outputs)
        return self._forward_done(list(zip([p for p, _ in updates],
                                           outs[n_fwd - len(updates):n_fwd])), blobs)

    # ------------------------------------------------------------------ backward
    def _needs_backward(self):
        """Caffe's rule: a layer needs backward if a bottom does or it learns a param
        (lr_mult != 0), or force_backward; its tops then need backward too."""
        need = {}
        for l in self._layers:
            if not l.bottoms:
                n = self.force_backward
            else:
                n = self.force_backward or any(need.get(b, False) for b in l.bottoms) or \
                    any(m != 0 for m in l.lr_mult)
            for b in l.tops:
                need[b] = need.get(b, False) or n
        return need

    def _backward_parts(self):
        sinks, seen = [], set()
        for l in self._layers:
            for t, w in zip(l.top_tensors, l.loss_weights):
                if w and t.id not in seen:
                    sinks.append(t)
                    seen.add(t.id)
        if self.force_backward:
            for b in self.outputs:
                t = self._current[b]
                if t.id not in seen:
                    sinks.append(t)
                    seen.add(t.id)
        need = self._needs_backward()
        firsts, seen_b = [], set()
        for l in self._layers:
            for name, t in zip(l.tops, l.top_tensors):
                if name not in seen_b and need.get(name) and \
                        (l.bottoms or self.force_backward):
                    firsts.append((name, t))
                seen_b.add(name)
        params, seen_p = [], set()
        for l in self._layers:
            for t, blob, m in zip(l.params, l.blobs, l.lr_mult):
                if m != 0 and t.id not in seen_p:
                    params.append((t, blob))
                    seen_p.add(t.id)
        return sinks, firsts, params

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Back-propagate from the loss (and output blobs' diffs, set by keyword arrays):
        bottom blobs get their diffs, parameter diffs accumulate, as in Caffe. ``start``
        and ``end`` (layer names, start the later one) run Caffe's BackwardFromTo: the
        layers from start down to end, from the diffs their tops hold. Before any forward
        it runs on the zeros the blobs hold, as in Caffe. Returns {blob: diff} for the
        net's inputs, or the bottoms of ``end`` (and the blobs named in ``diffs``)."""
        self._check_open("backward")
        for name, array in kwargs.items():
            if name not in self.outputs:
                raise KeyError(f"backward: '{name}' is not an output blob {self.outputs}")
            self.blobs[name].diff[...] = array
        last = len(self._layers) - 1
        s, e = self._layer_index(start, last), self._layer_index(end, 0)
        self._counter_value = getattr(self, "_last_counter", self.iteration)
        if self._hooks["before_backward"] or self._hooks["after_backward"]:
            for i in range(s, e - 1, -1):
                self._run_hooks("before_backward", i)
                self._backward_range(i, i)
                self._run_hooks("after_backward", i)
        elif (s, e) == (last, 0):
            self._backward_all()
        elif s >= e:
            self._backward_range(s, e)
        first = list(self.inputs) if end is None else list(self._layers[e].bottoms)
        names = first + [b for b in (diffs or []) if b not in first]
        return {b: self.blobs[b].diff for b in dict.fromkeys(names)}

    def _backward_all(self):
        compiled = self._backward_fn()
        if compiled is None:
            return
        fn, feeds, extra = compiled
        _, firsts, params = self._backward_parts()
        arrays = [self._store(t) for t in feeds] + extra
        outs = [self.blobs[name].diff_mem for name, _ in firsts] + \
            [blob.diff_mem for _, blob in params]
        fn(*arrays, out=outs, timed=self._timed)

    def _backward_range(self, s, e):
        """Layers s down to e: the diffs of their tops that no layer of the range reads
        are the cotangents; the bottoms coming from outside the range (that need
        backward) get their diffs, learned params accumulate theirs. The bottoms are cut
        from what computed them, so a diff counts only the range's layers, as Caffe's."""
        key = ("backward_range", s, e)
        if key not in self._fns:
            rng = self._layers[e:s + 1]
            made = {t.id for l in rng for t in l.top_tensors}
            read = {t.id for l in rng for t in l.bottom_tensors if t is not None}
            need = self._needs_backward()
            sinks = list({t.id: t for l in rng for t in l.top_tensors
                          if t.id not in read and not isinstance(t.op, ops.Input)}.values())
            wrt = list({t.id: t for l in rng for t in l.bottom_tensors
                        if t is not None and t.id not in made and
                        (need.get(t.name) or self.force_backward)}.values())
            params = list({t.id: (t, blob) for l in rng
                           for t, blob, m in zip(l.params, l.blobs, l.lr_mult) if m}.values())
            if not sinks or not (wrt or params):
                self._fns[key] = (None,)
                return
            with graph_scope(self.graph):
                cut = {t: F.input(f"{t.name}_bottom", t.shape) for t in wrt}
                tops = self.graph.clone(sinks, cut) if cut else sinks
                cots = [F.input(f"{t.name}_diff", t.shape) for t in sinks]
                pdiffs = [F.input(f"{blob.name}_diff", t.shape) for t, blob in params]
                grads = vjp(tops, cots, list(cut.values()) + [t for t, _ in params])
                grads = grads[:len(wrt)] + [F.add(d, g) for d, g in
                                            zip(pdiffs, grads[len(wrt):])]
            extra = list(cut.values()) + cots + pdiffs
            fn, feeds, used = self._compile(key, grads, self._all_versions(), extra=extra)
            self._fns[key] = (fn, feeds, used, wrt, sinks, params)
        entry = self._fns[key]
        if entry[0] is None:
            return
        fn, feeds, used, wrt, sinks, params = entry
        extra = [self._store(t) for t in wrt] + \
            [self.blobs[t.name].diff_mem for t in sinks] + [blob.diff_mem for _, blob in params]
        outs = [self.blobs[t.name].diff_mem for t in wrt] + [blob.diff_mem for _, blob in params]
        fn(*[self._store(t) for t in feeds], *[extra[i] for i in used], out=outs,
           timed=self._timed)

    def time(self, iterations=10):
        """Per-layer forward and backward milliseconds (averaged), attributing a fused
        kernel's time equally to the layers it contains; also per step of each plan.
        Returns {"layers": {name: {"forward": ms, "backward": ms}}, "steps": [...]}."""
        self.forward()
        has_backward = self._backward_parts()[0] and self.phase == TRAIN
        if has_backward:
            self.backward()
        layers = {name: {"forward": 0.0, "backward": 0.0} for name in self._layer_names}
        steps = []
        for key, entry in list(self._fns.items()):
            fn = entry[0]
            impl = getattr(fn, "_impl", None)
            if impl is None:
                continue
            ex = impl.executor
            ex.step_times[:] = 0
            ex.timed_calls = 0
        for _ in range(iterations):
            self._timed = True
            try:
                self.forward()
                if has_backward:
                    self.backward()
            finally:
                self._timed = False
        for key, entry in self._fns.items():
            impl = getattr(entry[0], "_impl", None)
            if impl is None or not impl.executor.timed_calls:
                continue
            ex = impl.executor
            phase = "forward" if key[0] == "forward" else "backward"
            for step, total in zip(impl.plan.steps, ex.step_times):
                ms = 1e3 * total / ex.timed_calls
                steps.append({"phase": phase, "name": step.name, "kind": step.kind,
                              "layers": list(step.attrs.get("layers", [])), "ms": ms})
                tags = [t for t in step.attrs.get("layers", []) if t in layers] or []
                for t in tags:
                    layers[t][phase] += ms / len(tags)
        return {"layers": layers, "steps": steps}

    def clear_param_diffs(self):
        """Zero every param diff where it lives (on the device: nothing moves)."""
        for blobs in self.params.values():
            for b in blobs:
                b.diff_mem.fill_zero()

    def reshape(self):
        """Rebuild after input blobs were reshaped; compiled modules come from the cache."""
        for b in self.inputs:
            self._input_shapes[b] = self.blobs[b].shape
        self._build()

    # ------------------------------------------------------------------ weights
    def copy_from(self, path):
        """Load a .caffemodel: blobs matched to layers by name as Caffe does; layers
        missing from the file keep their fillers; a shape mismatch is an error."""
        copy_trained_layers(self, path)

    def save(self, path):
        save_net(self, path)

    @property
    def layers(self):
        """pycaffe's ``net.layers``: each layer's ``type``, ``blobs``, ``bottoms`` and
        ``tops``; a Caffe Python layer is the user's own instance, as in Caffe."""
        return [l.runner.layer if getattr(l, "runner", None) is not None else l
                for l in self._layers]

    @property
    def layer_dict(self):
        return collections.OrderedDict(zip(self._layer_names, self.layers))

    @property
    def top_names(self):
        return collections.OrderedDict((l.name, list(l.tops)) for l in self._layers)

    @property
    def bottom_names(self):
        return collections.OrderedDict((l.name, list(l.bottoms)) for l in self._layers)

    @property
    def _blob_names(self):
        return list(self.blobs)

    # ------------------------------------------------------------------ pycaffe extras
    @property
    def _blob_loss_weights(self):
        """The loss weight of each blob, in blob order (0 for blobs that are no loss)."""
        weights = dict.fromkeys(self.blobs, 0.0)
        for layer in self._layers:
            for name, w in zip(layer.tops, layer.loss_weights):
                weights[name] = float(w)
        return list(weights.values())

    @property
    def blob_loss_weights(self):
        return collections.OrderedDict(zip(self.blobs, self._blob_loss_weights))

    @property
    def _inputs(self):
        """Indices of the input blobs in blob order (pycaffe's ``net._inputs``)."""
        names = list(self.blobs)
        return [names.index(b) for b in self.inputs]

    @property
    def _outputs(self):
        names = list(self.blobs)
        return [names.index(b) for b in self.outputs]

    def share_with(self, other):
        """Use ``other``'s param memories, layer by layer, by name (Caffe's
        ShareTrainedLayersWith): layers missing from ``other`` keep their own."""
        source = {}
        for name, layer in zip(other._layer_names, other.layers):
            source.setdefault(name, layer)
        for name, layer in zip(self._layer_names, self._layers):
            src = source.get(name)
            if src is None or not layer.blobs:
                continue
            if len(src.blobs) != len(layer.blobs):
                raise ValueError(f"share_with: layer '{name}' has {len(layer.blobs)} blobs, "
                                 f"the source layer {len(src.blobs)}")
            for j, (dst, s) in enumerate(zip(layer.blobs, src.blobs)):
                if dst is s:
                    continue
                if dst.shape != s.shape:
                    raise ValueError(f"share_with: layer '{name}' blob {j} has shape "
                                     f"{dst.shape}, the source's {s.shape}")
                dst.share_data(s)

    def _batches(self, arrays):
        """pycaffe's _batch: the given input arrays in batches of the net's batch size,
        the last one padded with zeros."""
        n = len(next(iter(arrays.values())))
        size = self.blobs[next(iter(arrays))].shape[0]
        for name, a in arrays.items():
            if len(a) != n:
                raise ValueError(f"'{name}' has {len(a)} items, the others {n}")
        for i in range(0, n, size):
            batch = {}
            for name, a in arrays.items():
                chunk = np.asarray(a[i:i + size], dtype=np.float32)
                if len(chunk) < size:
                    pad = np.zeros((size - len(chunk),) + chunk.shape[1:], np.float32)
                    chunk = np.concatenate([chunk, pad])
                batch[name] = chunk
            yield batch

    def forward_all(self, blobs=None, **kwargs):
        """Forward every item of the given inputs in batches; {blob: all its values}."""
        outs = {b: [] for b in dict.fromkeys(list(self.outputs) + list(blobs or []))}
        if not kwargs:
            kwargs = {b: self.blobs[b].data.copy() for b in self.inputs}
        n = len(next(iter(kwargs.values())))
        for batch in self._batches(kwargs):
            got = self.forward(blobs=blobs, **batch)
            for b in outs:
                outs[b].extend(np.array(got[b], copy=True))
        return {b: np.asarray(v[:n]) for b, v in outs.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all, then backward in the same batches with the output diffs given as
        keyword arrays; ({blob: values}, {blob: diffs})."""
        fwd = {b: a for b, a in kwargs.items() if b in self.inputs}
        bwd = {b: a for b, a in kwargs.items() if b in self.outputs}
        outs = {b: [] for b in dict.fromkeys(list(self.outputs) + list(blobs or []))}
        grads = {b: [] for b in dict.fromkeys(list(self.inputs) + list(diffs or []))}
        n = len(next(iter(fwd.values())))
        bwd_batches = self._batches(bwd) if bwd else None
        for batch in self._batches(fwd):
            got = self.forward(blobs=blobs, **batch)
            got_d = self.backward(diffs=diffs, **(next(bwd_batches) if bwd else {}))
            for b in outs:
                outs[b].extend(np.array(got[b], copy=True))
            for b in grads:
                grads[b].extend(np.array(got_d[b], copy=True))
        return ({b: np.asarray(v[:n]) for b, v in outs.items()},
                {b: np.asarray(v[:n]) for b, v in grads.items()})

    def save_hdf5(self, path, write_diff=False):
        """Caffe's Net::ToHDF5: group ``data`` (and ``diff``) holding a group per layer
        with params, a dataset per blob named by its index; written atomically."""
        h5py = _h5py("save_hdf5")

        def fill(fd, tmp):
            os.close(fd)
            with h5py.File(tmp, "w") as f:
                for what in ("data", "diff") if write_diff else ("data",):
                    group = f.create_group(what)
                    for name, layer in zip(self._layer_names, self._layers):
                        if not layer.blobs or name in group:
                            continue
                        lg = group.create_group(name)
                        for j, blob in enumerate(layer.blobs):
                            arr = blob.read_data() if what == "data" else blob.read_diff()
                            lg.create_dataset(str(j), data=arr)
        prototxt.replace_file(path, fill)

    def load_hdf5(self, path):
        """Caffe's CopyTrainedLayersFromHDF5: each layer with params takes the blobs of
        the group of its name in ``data``; counts and shapes must match, and every blob
        is checked before any is written (a WeightsError names the file and layer)."""
        write_trained_layers(check_hdf5_layers(self, path))
