"""Solvers: Caffe's training loop on symnet nets, with the parameter update generated
and fused by codegen.

    solver = sn.get_solver("lenet_solver.prototxt")      # the file's ``type``
    solver.solve()                                       # or solver.step(100)
    solver.net, solver.test_nets, solver.iter, solver.lr

The solver prototxt is Caffe's SolverParameter (``solver_type: ENUM`` is upgraded).
Solvers and formulas (g: the gradient after clipping, 1/iter_size normalisation and
weight decay; lr: the policy's rate times the param's ``lr_mult``; h, h2: histories;
all as in Caffe's ``src/caffe/solvers/*.cpp``):

=========  ===================================================================
SGD        h = momentum h + lr g;                       p -= h
Nesterov   h' = momentum h + lr g;                      p -= (1 + momentum) h' - momentum h
AdaGrad    h += g^2;                                    p -= lr g / (sqrt(h) + delta)
RMSProp    h = rms_decay h + (1 - rms_decay) g^2;       p -= lr g / (sqrt(h) + delta)
AdaDelta   h = momentum h + (1 - momentum) g^2;  u = g sqrt((h2 + delta) / (h + delta));
           h2 = momentum h2 + (1 - momentum) u^2;       p -= lr u
Adam       m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2  (b1 = momentum, b2 = momentum2);
           p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + delta),  t = iter + 1
=========  ===================================================================

Before that, as Caffe's ``ApplyUpdate``: ``clip_gradients`` scales every diff by
clip / ||all diffs|| when the global L2 norm exceeds it; diffs are scaled by
1/iter_size; weight decay adds ``weight_decay * decay_mult * p`` (L2) or ``... *
sign(p)`` (L1).

The update is one symnet graph over all learnable params, compiled with
``sn.function`` on the net's backend: params with the same (lr_mult, decay_mult) are
laid end to end in flat buffers (each Blob's ``data``/``diff`` is a view into them, see
``runtime.blob.flatten_blobs``), so a step's update runs one fused elementwise kernel
per such class (usually one or two: weights and biases), plus a reduction for
``clip_gradients``. After a step, param diffs hold the accumulated gradients (Caffe
leaves the update values there).

Paths: ``net``, ``train_net``, ``test_net`` and ``snapshot_prefix`` are relative to the
current directory, as in Caffe; a net file not found there is looked up next to the
solver file. Without ``snapshot_prefix`` the prefix is the solver file's path without
its extension, and a prefix naming a folder gets the solver file's stem appended
(Caffe's UpgradeSnapshotPrefixProperty).

Snapshots are ``<prefix>_iter_N.caffemodel`` and ``<prefix>_iter_N.solverstate`` (a
SolverState: iter, learned_net, history, current_step), each written to a temporary
file beside it (``.<name>.<12 hex digits>.symnet-tmp``) and renamed, so an interrupted
write leaves earlier files intact; such temporary files that a killed snapshot left and
that are more than an hour old are removed at the next snapshot. The solverstate also
carries symnet's own resume data (the net's iteration counter and the positions of data
layers whose source has ``state()``/``set_state()``) as JSON in field number 1000, which
Caffe's reader skips as an unknown field.

``restore`` reads a .solverstate or Caffe's HDF5 form (``.solverstate.h5``) and checks
all of it before changing anything: the number of history blobs (one per learnable
param, two for AdaDelta and Adam, the second set after the first, as Caffe lays them
out) and each one's shape, the learned_net weights, and the form of the resume data.
A malformed state is a SolverError and leaves the solver, weights, histories and data
positions as they were. A resume that cannot be exact (no resume data, as in Caffe's
states; a data source that cannot seek) gives a ResumeWarning saying what differs.

``random_seed`` (when >= 0) seeds symnet's filler generator and the data layers' base
seed; symnet's random ops (Dropout) are counter-based, hence the same on every run.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import signal
import stat
import time
import warnings

import numpy as np

from . import fillers
from . import functions as F
from .errors import SymnetError
from .formats import prototxt, upgrade
from .formats.proto import caffe_pb2
from .formats import weights as weights_io
from .formats.weights import net_to_proto
from .function import Function
from .graph import Graph, graph_scope
from .net import TEST, TRAIN, Net
from .runtime.blob import flatten_blobs, is_view_of
from .runtime.memory import SyncedMemory

log = logging.getLogger("symnet.solver")

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
EXTRA_FIELD = 1000          # SolverState field holding symnet's JSON resume data
EXTRA_FORMAT = "symnet-solverstate/1"


class SolverError(SymnetError, ValueError):
    """A solver prototxt or solver state is wrong (the message says what and where)."""


class SolverAction:
    """What a signal asks for, as caffe's ``--sigint_effect`` / ``--sighup_effect``."""
    NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"
    ALL = ("none", "stop", "snapshot")


def _f32(x) -> float:
    return float(np.float32(x))


# ----------------------------------------------------------------------------- lr policy

def learning_rate(param, it, current_step=0):
    """(rate, current_step) of Caffe's SGDSolver::GetLearningRate at iteration ``it``.

    ``current_step`` is the solver's state for ``step`` and ``multistep`` (multistep
    moves at most one step per call, as Caffe's does)."""
    policy = param.lr_policy
    base = param.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        if param.stepsize <= 0:
            raise SolverError(f'lr_policy "step" needs stepsize > 0, got {param.stepsize}')
        current_step = it // param.stepsize
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "exp":
        rate = base * math.pow(param.gamma, it)
    elif policy == "inv":
        rate = base * math.pow(1.0 + param.gamma * it, -param.power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "poly":
        if param.max_iter <= 0:
            raise SolverError(f'lr_policy "poly" needs max_iter > 0, got {param.max_iter}')
        rate = base * math.pow(1.0 - it / param.max_iter, param.power)
    elif policy == "sigmoid":
        if param.stepsize <= 0:
            raise SolverError(f'lr_policy "sigmoid" needs stepsize > 0, got {param.stepsize}')
        rate = base * (1.0 / (1.0 + math.exp(-param.gamma * (it - param.stepsize))))
    elif not policy:
        raise SolverError("the solver sets no lr_policy; expected one of "
                          + ", ".join(f'"{p}"' for p in POLICIES))
    else:
        raise SolverError(f'unknown lr_policy "{policy}"; expected one of '
                          + ", ".join(f'"{p}"' for p in POLICIES))
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise SolverError(f'lr_policy "{policy}" needs gamma >= 0, got {param.gamma}')
    return _f32(rate), current_step


# ----------------------------------------------------------------------------- files

def read_solver_param(source, filename=None):
    """A SolverParameter, upgraded, from a path, prototxt text or a message."""
    if isinstance(source, caffe_pb2.SolverParameter):
        param = source
    else:
        param = prototxt.parse_solver(source, filename=filename)
    param, _ = upgrade.upgrade_solver(param)
    return param


def _snapshot_prefix(param, solver_file):
    """Caffe's UpgradeSnapshotPrefixProperty: no prefix -> the solver file without its
    extension; a folder -> the solver file's stem inside it."""
    if not solver_file:
        return param.snapshot_prefix if param.HasField("snapshot_prefix") else ""
    stem = os.path.splitext(solver_file)[0]
    if not param.HasField("snapshot_prefix"):
        return stem
    if os.path.isdir(param.snapshot_prefix):
        return os.path.join(param.snapshot_prefix, os.path.basename(stem))
    return param.snapshot_prefix


def _varint(data, pos):
    result = shift = 0
    while True:
        if pos >= len(data):
            raise SolverError("truncated varint in the solverstate")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _encode_varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _top_level_field(data: bytes, number: int):
    """The last value of length-delimited top-level field ``number`` (or None)."""
    pos, found = 0, None
    while pos < len(data):
        key, pos = _varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            if num == number:
                found = data[pos:pos + n]
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise SolverError(f"unexpected wire type {wire} in the solverstate")
    return found


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


TEMP_SUFFIX = prototxt.TEMP_SUFFIX  # temporary files of snapshots: .<target>.<12 hex>.symnet-tmp
TEMP_MAX_AGE = 3600.0             # seconds after which a leftover temporary file is swept
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$")
# what earlier versions left (tempfile.mkstemp's 8 characters, ".tmp")
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def sweep_stale_temps(prefix, max_age=TEMP_MAX_AGE, now=None):
    """Remove temporary files that killed snapshots of ``prefix`` left in its folder:
    only regular files of this user named ``.<stem>_iter_N.caffemodel|solverstate
    [.h5].<random>.symnet-tmp`` (or the ``.tmp`` names of earlier versions) and last
    modified more than ``max_age`` seconds ago. Returns the paths removed."""
    directory, stem = os.path.split(os.path.abspath(prefix))
    target_re = re.compile(re.escape(stem) + r"_iter_\d+\.(caffemodel|solverstate)(\.h5)?$")
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name) or _LEGACY_TEMP_RE.match(entry.name)
        if not m or not target_re.match(m.group("target")):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or \
                    now - st.st_mtime <= max_age:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        log.info("Removed %s, left by an interrupted snapshot", entry.path)
        removed.append(entry.path)
    return removed


def write_files_atomically(items):
    """Write [(path, bytes)]: every file to a temporary file beside it (see
    :func:`symnet.formats.prototxt.create_temp`; flushed to disk), then each renamed over its target; on any
    error (or interrupt) the temporary files are removed and targets not yet renamed
    keep their old content."""
    temps = []
    try:
        for path, data in items:
            fd, tmp = prototxt.create_temp(path)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for (path, _), tmp in zip(items, temps):
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise SolverError(f"cannot write the snapshot: {e.strerror or e}") from e
        raise


# ----------------------------------------------------------------------------- signals

class SignalHandler:
    """SIGINT / SIGHUP turned into solver actions (caffe's --sigint_effect and
    --sighup_effect: "stop", "snapshot" or "none"). Use as a context manager around
    ``solve()``; ``solver.action_function = handler.requested_action``."""

    def __init__(self, sigint_effect="stop", sighup_effect="snapshot"):
        for name, v in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if v not in SolverAction.ALL:
                raise ValueError(f"{name} must be one of {SolverAction.ALL}, not {v!r}")
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self._got = []
        self._old = {}

    def _handle(self, signum, frame):
        self._got.append(signum)

    def requested_action(self):
        while self._got:
            effect = self.effects.get(self._got.pop(0), SolverAction.NONE)
            if effect != SolverAction.NONE:
                return effect
        return SolverAction.NONE

    def __enter__(self):
        for sig in self.effects:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        return False


# ----------------------------------------------------------------------------- solver

class Solver:
    """Caffe's Solver + SGDSolver. Build one with ``get_solver`` (the file's type) or a
    subclass (``SGDSolver(path)`` as in pycaffe).

    Keyword arguments: ``backend`` (the nets' backend), ``layer_modules``,
    ``input_shapes`` (stand in data layers, for every net), ``feed`` (a callable
    ``feed(solver, net, sub_iteration) -> {blob: array}`` giving input blobs before each
    training forward pass, e.g. for nets with Input layers), ``test_feed`` (the same
    for test nets: ``test_feed(solver, test_net, test_iteration)``), ``weights`` (a
    .caffemodel, or comma-separated paths, copied into the train and test nets)."""

    type = "SGD"
    n_histories = 1

    def __init__(self, solver, *, backend=None, layer_modules=(), input_shapes=None,
                 feed=None, test_feed=None, weights=None):
        self.filename = None
        if isinstance(solver, (str, os.PathLike)) and os.path.exists(solver):
            self.filename = os.fspath(solver)
        self.param = read_solver_param(solver if self.filename is None else self.filename)
        p = self.param
        self._check_param()
        self.backend = backend
        self.layer_modules = tuple(layer_modules)
        self.input_shapes = input_shapes
        self.feed, self.test_feed = feed, test_feed
        self.snapshot_prefix = _snapshot_prefix(p, self.filename)
        if p.random_seed >= 0:     # Caffe's Solver::Init, before the nets are built
            fillers.set_random_seed(int(p.random_seed))   # fillers, functions, data
        self.iter = 0
        self.current_step = 0
        self.lr = 0.0
        self.smoothed_loss = 0.0
        self._losses = []
        self.requested_early_exit = False
        self.action_function = None
        self.listeners = []
        self._callbacks = []
        self._layout = None
        self._update_fn = None
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        self.mean_scores = [[] for _ in self.test_nets]
        for w in ([weights] if weights else []) + list(p.weights):
            self.copy_weights(w)
        self._build_layout()            # which also shares the weights with the test nets

    # ------------------------------------------------------------------ setup
    def _check_param(self):
        p = self.param
        if p.average_loss < 1:
            raise SolverError(f"average_loss must be at least 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"iter_size must be at least 1, got {p.iter_size}")
        if p.regularization_type not in ("L1", "L2"):
            raise SolverError(f'unknown regularization_type "{p.regularization_type}"; '
                              'expected "L1" or "L2"')
        if p.snapshot_format != p.BINARYPROTO and p.snapshot > 0:
            raise SolverError("snapshot_format HDF5 is not supported; use BINARYPROTO")
        self._check_type_param()

    def _check_type_param(self):
        pass

    def _where(self):
        return f"solver {self.filename or '<message>'}"

    def _net_file(self, path, field):
        if os.path.exists(path):
            return path
        if self.filename and not os.path.isabs(path):
            alt = os.path.join(os.path.dirname(self.filename), path)
            if os.path.exists(alt):
                return alt
        raise SolverError(f"{self._where()}: {field} '{path}' not found (relative paths are "
                          "taken from the current directory, as in Caffe, then from the "
                          "solver file's folder)")

    def _make_net(self, model, phase_state, solver_state):
        state = caffe_pb2.NetState()
        state.phase = phase_state
        if isinstance(model, str):
            file_state = prototxt.parse_net(model).state
        else:
            file_state = model.state
        state.MergeFrom(file_state)
        if solver_state is not None:
            state.MergeFrom(solver_state)
        if not isinstance(model, str):
            msg = caffe_pb2.NetParameter()
            msg.CopyFrom(model)
            msg.state.CopyFrom(state)
            model = msg
        return Net(model, phase=state.phase, stages=list(state.stage), level=state.level,
                   backend=self.backend, layer_modules=self.layer_modules,
                   input_shapes=self.input_shapes)

    def _init_train_net(self):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param")
                 if p.HasField(f)]
        if len(given) != 1:
            raise SolverError(f"{self._where()}: give exactly one train net with net, "
                              f"net_param, train_net or train_net_param; found "
                              f"{', '.join(given) or 'none'}")
        field = given[0]
        model = getattr(p, field)
        if field in ("net", "train_net"):
            model = self._net_file(model, field)
        return self._make_net(model, TRAIN, p.train_state if p.HasField("train_state")
                              else None)

    def _init_test_nets(self):
        p = self.param
        generic = [f for f in ("net", "net_param") if p.HasField(f)]
        if len(generic) > 1:
            raise SolverError(f"{self._where()}: both net and net_param are given")
        n_specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < n_specific:
            raise SolverError(f"{self._where()}: test_iter must be given for each test net "
                              f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
        if not generic and len(p.test_iter) != n_specific:
            raise SolverError(f"{self._where()}: test_iter must be given for each test net "
                              f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
        models = list(p.test_net_param)
        models += [self._net_file(f, "test_net") for f in p.test_net]
        remaining = len(p.test_iter) - len(models)
        if generic:
            m = getattr(p, generic[0])
            if generic[0] == "net":
                m = self._net_file(m, "net")
            models += [m] * remaining
        if len(p.test_state) and len(p.test_state) != len(models):
            raise SolverError(f"{self._where()}: test_state must be unset or given once per "
                              f"test net ({len(models)} test nets)")
        if models and p.test_interval <= 0:
            raise SolverError(f"{self._where()}: test nets need test_interval > 0")
        return [self._make_net(m, TEST, p.test_state[i] if len(p.test_state) else None)
                for i, m in enumerate(models)]

    # ------------------------------------------------------------------ layout
    def learnable_params(self):
        """[(blob, lr_mult, decay_mult)] in Caffe's learnable_params order: each blob
        once (the first layer naming a shared param owns it)."""
        out, seen = [], set()
        for layer in self.net._layers:
            for k, blob in enumerate(layer.blobs):
                if id(blob) in seen:
                    continue
                seen.add(id(blob))
                lr = layer.lr_mult[k] if k < len(layer.lr_mult) else 1.0
                dm = layer.decay_mult[k] if k < len(layer.decay_mult) else 1.0
                out.append((blob, float(lr), float(dm)))
        return out

    def _build_layout(self, old_histories=None):
        """Group learnable params by (lr_mult, decay_mult); each group's data, diff and
        histories live in flat arrays, the blobs' arrays are views into them."""
        params = self.learnable_params()
        classes = {}
        for i, (blob, lr, dm) in enumerate(params):
            classes.setdefault((_f32(lr), _f32(dm)), []).append(i)
        groups = []
        for (lr, dm), idx in classes.items():
            blobs = [params[i][0] for i in idx]
            data, diff, offsets = flatten_blobs(blobs)
            hist = [SyncedMemory(data.shape) for _ in range(self.n_histories)]
            groups.append({"lr_mult": lr, "decay_mult": dm, "index": idx, "blobs": blobs,
                           "offsets": offsets, "data": data, "diff": diff, "hist": hist})
        views = [[None] * len(params) for _ in range(self.n_histories)]
        for g in groups:
            for i, b, off in zip(g["index"], g["blobs"], g["offsets"]):
                for j in range(self.n_histories):
                    views[j][i] = g["hist"][j].view(off, b.shape)
        if old_histories is not None:
            for j, arrays in enumerate(old_histories[:self.n_histories]):
                for i, a in enumerate(arrays[:len(params)]):
                    if a is not None and a.shape == views[j][i].shape:
                        views[j][i].host_write()[...] = a
        self._params = params
        self._layout = groups
        self._history_views = views
        self._layout_key = [id(b) for b, _, _ in params]
        self._update_fn = None
        for net in getattr(self, "test_nets", []):
            self.share_weights(net)

    def _sync_layout(self):
        """Rebuild the flat layout when the net's params changed (net.reshape) or a
        blob's arrays no longer lie in the flat buffers."""
        if [id(b) for b, _, _ in self.learnable_params()] != self._layout_key:
            self._build_layout(self._history_copies())
            return
        for g in self._layout:
            for b, off in zip(g["blobs"], g["offsets"]):
                if not (is_view_of(b, g["data"], off, "data")
                        and is_view_of(b, g["diff"], off, "diff")):
                    self._build_layout(self._history_copies())
                    return

    def _history_copies(self):
        return [[np.array(v.host_read()) for v in hs] for hs in self._history_views]

    @property
    def history(self):
        """The history blobs' arrays in Caffe's order (one list per history set); the host
        becomes their head, as pycaffe's ``blob.data``."""
        return [v.host_write() for hs in self._history_views for v in hs]

    # ------------------------------------------------------------------ update graph
    def _rule(self, p, g, hs, lr, lm, scalars):
        """(new param, new histories) of one param class: Tensors. ``lr`` is the rate
        (a scalar input), ``lm`` the class's lr_mult (a number): Caffe's local_rate is
        ``lr * lm``."""
        raise NotImplementedError

    def _lr_scalars(self, rate):
        """The scalar inputs of the update besides the rate (Adam's correction)."""
        return []

    def _build_update(self):
        prm = self.param
        graph = Graph()
        with graph_scope(graph):
            lr = F.input("lr", ())
            extra = [F.input(f"s{k}", ()) for k in range(len(self._lr_scalars(1.0)))]
            ins, outs = [lr] + extra, []
            groups = []
            for k, gr in enumerate(self._layout):
                n = gr["data"].size
                P = F.input(f"param{k}", (n,))
                G = F.input(f"diff{k}", (n,))
                H = [F.input(f"history{j}_{k}", (n,)) for j in range(self.n_histories)]
                ins += [P, G] + H
                groups.append((gr, P, G, H))
            scale = None
            clip = prm.clip_gradients
            if clip >= 0 and groups:
                sumsq = None
                for _, _, G, _ in groups:
                    s = F.sum(F.elementwise(lambda x: x * x, G, label="sq"))
                    sumsq = s if sumsq is None else F.add(sumsq, s)
                c = _f32(clip)
                scale = F.elementwise(
                    lambda s: _piecewise_clip(s, c), sumsq, label="clip_scale")
            norm = _f32(1.0 / prm.iter_size) if prm.iter_size != 1 else None
            wd = _f32(prm.weight_decay)
            for gr, P, G, H in groups:
                g = G
                if scale is not None:
                    g = F.elementwise(lambda x, s: x * s, g, scale, label="clip")
                if norm is not None:
                    g = F.elementwise(lambda x: x * norm, g, label="normalize")
                local_decay = _f32(np.float32(wd) * np.float32(gr["decay_mult"]))
                if local_decay:
                    if prm.regularization_type == "L2":
                        g = F.elementwise(lambda x, w: x + local_decay * w, g, P,
                                          label="l2_decay")
                    else:
                        import sympy as sp
                        g = F.elementwise(lambda x, w: x + local_decay * sp.sign(w), g, P,
                                          label="l1_decay")
                p_new, h_new = self._rule(P, g, H, lr, gr["lr_mult"], extra)
                outs += [p_new] + list(h_new)
            if not outs:
                self._update_fn = None
                return
            if scale is not None:       # the squared norm, read back only to log it
                outs.append(sumsq)
            name = f"{self.type.lower()}_update"
            self._update_fn = Function(ins, outs, backend=self.net.backend, name=name)

    def update_function(self):
        """The compiled update Function (built on first use)."""
        if self._update_fn is None:
            self._build_update()
        return self._update_fn

    def apply_update(self):
        """Caffe's ApplyUpdate: the rate for the current iteration, then the fused
        update of every learnable param."""
        self._sync_layout()
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        self.lr = rate
        if self.param.display and self.iter % self.param.display == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        fn = self.update_function()
        if fn is None:
            return
        arrays = [np.float32(rate)] + [np.float32(s) for s in self._lr_scalars(rate)]
        out = []
        for gr in self._layout:
            arrays += [gr["data"], gr["diff"]] + gr["hist"]
            out += [gr["data"]] + gr["hist"]
        clipping = len(fn.outputs) > len(out)
        if clipping:                    # the gradients' squared norm, computed on the device
            out.append(np.empty((), np.float32))
        fn(*arrays, out=out)
        if clipping:
            self._log_clip(float(out[-1]))

    def _log_clip(self, sumsq):
        """Caffe's ClipGradients message, from the squared L2 norm of all diffs that the
        update computed (only that scalar leaves the device)."""
        if not log.isEnabledFor(logging.INFO):
            return
        norm = math.sqrt(sumsq)
        clip = self.param.clip_gradients
        if norm > clip:
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                     "factor %g", norm, clip, clip / norm)

    # ------------------------------------------------------------------ training
    def add_callback(self, on_start=None, on_gradients_ready=None):
        """pycaffe's ``solver.add_callback(on_start, on_gradients_ready)``."""
        self._callbacks.append((on_start, on_gradients_ready))

    def _emit(self, event):
        for fn in list(self.listeners):
            fn(event)

    def _request(self):
        if self.action_function is None:
            return SolverAction.NONE
        return self.action_function() or SolverAction.NONE

    def clear_param_diffs(self):
        self._sync_layout()
        for g in self._layout:         # every param blob's diff is a view of these
            g["diff"].fill_zero()

    def forward_backward(self, sub=0):
        """One forward and backward pass of the train net; the loss."""
        feed = self.feed(self, self.net, sub) if self.feed else {}
        self.net.forward_backward(**(feed or {}))
        return net_loss(self.net)

    def _update_smoothed_loss(self, loss, start_iter):
        avg = self.param.average_loss
        if len(self._losses) < avg:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss += (loss - self._losses[idx]) / avg
            self._losses[idx] = loss

    def step(self, iters):
        """Caffe's Solver::Step: ``iters`` iterations (tests, display, snapshots)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self._losses = []
        self.smoothed_loss = 0.0
        timer, last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and \
                    (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                if on_start:
                    on_start()
            display = bool(p.display) and self.iter % p.display == 0
            loss = 0.0
            for i in range(p.iter_size):
                loss += self.forward_backward(i)
            loss /= p.iter_size
            self._update_smoothed_loss(loss, start_iter)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - last) / lapse if lapse > 0 else 0.0
                outputs = output_scores(self.net)
                log.info("Iteration %d (%.4g iter/s, %.4gs/%d iters), loss = %.6g",
                         self.iter, per_s, lapse, p.display, self.smoothed_loss)
                for k, o in enumerate(outputs):
                    log.info("    Train net output #%d: %s = %.6g%s", k, o["name"],
                             o["value"], _loss_note(o))
                self._emit({"event": "train", "iter": self.iter,
                            "loss": self.smoothed_loss, "outputs": outputs,
                            "iters_per_s": per_s, "time": time.time()})
                timer, last = time.perf_counter(), self.iter
            for _, on_grad in self._callbacks:
                if on_grad:
                    on_grad()
            self.apply_update()
            if display:
                self._emit({"event": "lr", "iter": self.iter, "lr": self.lr})
            self.iter += 1
            self._emit({"event": "iteration", "iter": self.iter, "loss": loss,
                        "lr": self.lr})
            request = self._request()
            if (p.snapshot and self.iter % p.snapshot == 0) or \
                    request == SolverAction.SNAPSHOT:
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def solve(self, resume_file=None):
        """Caffe's Solver::Solve: (restore,) train to max_iter, snapshot, final test."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            self._emit({"event": "stopped", "iter": self.iter})
            return
        if p.display and self.iter % p.display == 0:
            feed = self.feed(self, self.net, 0) if self.feed else {}
            self.net.forward(**(feed or {}))
            self._update_smoothed_loss(net_loss(self.net), start_iter)
            log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
            self._emit({"event": "train", "iter": self.iter, "loss": self.smoothed_loss,
                        "outputs": output_scores(self.net), "time": time.time()})
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")
        self._emit({"event": "done", "iter": self.iter})

    # ------------------------------------------------------------------ testing
    def share_weights(self, net):
        """Make ``net``'s params use the train net's param memories, layer by layer, by
        name (Caffe's ShareTrainedLayersWith): the same values on the host and the
        device, so a test net measures the current weights without copies."""
        try:
            net.share_with(self.net)
        except ValueError as e:
            raise SolverError(f"{self._where()}: test net: {e}") from None

    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Caffe's Solver::Test: test_iter forward passes, mean of each output."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        self.share_weights(net)
        scores, names, loss = None, None, 0.0
        n = p.test_iter[test_net_id]
        for i in range(n):
            request = self._request()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._request()
            if self.requested_early_exit:
                break
            feed = self.test_feed(self, net, i) if self.test_feed else {}
            net.forward(**(feed or {}))
            if p.test_compute_loss:
                loss += net_loss(net)
            vals = output_scores(net)
            if scores is None:
                scores = [o["value"] for o in vals]
                names = vals
            else:
                for k, o in enumerate(vals):
                    scores[k] += o["value"]
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return
        event = {"event": "test", "iter": self.iter, "net": test_net_id, "outputs": []}
        if p.test_compute_loss:
            loss /= n
            log.info("Test loss: %.6g", loss)
            event["loss"] = loss
        means = []
        for k, o in enumerate(names or []):
            mean = scores[k] / n
            means.append(mean)
            rec = dict(o, value=mean)
            event["outputs"].append(rec)
            log.info("    Test net output #%d: %s = %.6g%s", k, o["name"], mean,
                     _loss_note(rec))
        self.mean_scores[test_net_id] = means
        self._emit(event)
        return event

    # ------------------------------------------------------------------ snapshots
    def snapshot_filename(self, extension):
        return f"{self.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write ``<prefix>_iter_N.caffemodel`` and ``.solverstate``; returns (model
        path, state path). Both are written to temporary files in the target folder
        first and renamed into place only when both are complete, so an interrupted
        snapshot leaves earlier files as they were."""
        self._sync_layout()
        model = self.snapshot_filename(".caffemodel")
        state_path = self.snapshot_filename(".solverstate")
        directory = os.path.dirname(os.path.abspath(model))
        if not os.path.isdir(directory):
            raise SolverError(f"cannot snapshot to '{model}': folder '{directory}' does not "
                              "exist; create it or change snapshot_prefix")
        sweep_stale_temps(self.snapshot_prefix)
        log.info("Snapshotting to binary proto file %s", model)
        model_bytes = prototxt._serialize(net_to_proto(self.net), model)
        log.info("Snapshotting solver state to binary proto file %s", state_path)
        write_files_atomically([(model, model_bytes),
                                (state_path, self._state_bytes(model))])
        self._emit({"event": "snapshot", "iter": self.iter, "model": model,
                    "state": state_path})
        return model, state_path

    def _state_bytes(self, model_filename):
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = model_filename
        state.current_step = self.current_step
        for a in (v.host_read() for hs in self._history_views for v in hs):
            state.history.append(prototxt.array_to_blob(np.ascontiguousarray(a)))
        extra = {"format": EXTRA_FORMAT, "type": self.type,
                 "net_iteration": int(self.net.iteration),
                 "data": {"train": _data_states(self.net),
                          "test": [_data_states(n) for n in self.test_nets]}}
        blob = json.dumps(extra, default=_json_default, sort_keys=True).encode("utf-8")
        return state.SerializeToString() + \
            _encode_varint(EXTRA_FIELD << 3 | 2) + _encode_varint(len(blob)) + blob

    def restore(self, state_file):
        """Continue from a solver state: a .solverstate (Caffe's or symnet's) or Caffe's
        HDF5 form (a name ending in .h5): iteration, lr policy step, histories, the
        weights of ``learned_net`` and symnet's resume data (the positions of the data
        layers, the net's iteration counter).

        The whole state is checked before anything changes: a malformed one is a
        SolverError naming the file, the field or blob and what was found and expected,
        and the solver, the nets' weights, the histories and the data positions are as
        they were. Where the resume cannot be exact (a state without symnet's resume
        data, e.g. Caffe's; a data source that cannot seek) a :class:`ResumeWarning`
        says what will differ."""
        state_file = os.fspath(state_file)
        plan = self._read_state(state_file)
        self._apply_state(plan)
        for message in plan["warnings"]:
            warnings.warn(message, ResumeWarning, stacklevel=2)

    # -- reading and checking (nothing changes)
    def _read_state(self, state_file):
        data = b""
        if not state_file.endswith(".h5"):      # Caffe's test for the HDF5 form
            data = prototxt.read_limited(state_file, what="solver state (.solverstate)",
                                         limit=prototxt.MAX_BINARY_BYTES,
                                         error=SolverError)
        self._sync_layout()
        if state_file.endswith(".h5") or data.startswith(weights_io.HDF5_SIGNATURE):
            plan = self._read_state_hdf5(state_file)
        else:
            plan = self._read_state_proto(state_file, data)
        plan["warnings"] = []
        learned = plan["learned_net"]
        if learned:
            path = self._learned_net_path(learned, state_file)
            try:
                plan["weights"] = weights_io.check_trained_layers(self.net, path)
            except SymnetError as e:
                raise SolverError(f"{state_file}: learned_net '{learned}': {e}") from None
        else:
            plan["weights"] = []
            plan["warnings"].append(f"{state_file} names no learned_net: the net keeps its "
                                    "current weights")
        self._check_resume_data(state_file, plan)
        return plan

    def _history_shapes(self):
        """The shape each history blob must have, in Caffe's order: every learnable
        param's, once per history set (SGD, Nesterov, AdaGrad, RMSProp: one set; AdaDelta
        and Adam: two, the second after all params of the first)."""
        shapes = [tuple(v.shape) for v in self._history_views[0]]
        return shapes * self.n_histories

    def _history_count_error(self, state_file, found):
        n_params = len(self._history_views[0])
        per = "one history blob" if self.n_histories == 1 else \
            f"{self.n_histories} history blobs"
        return SolverError(f"{state_file}: holds {found} history blobs, the {self.type} "
                           f"solver of this net needs {n_params * self.n_histories} ({per} "
                           f"per learnable param, {n_params} params; same solver type and "
                           "net?)")

    @staticmethod
    def _check_counters(state_file, it, current_step):
        if it < 0 or current_step < 0:
            raise SolverError(f"{state_file}: iter {it} and current_step {current_step}; "
                              "both must be >= 0")

    def _read_state_proto(self, state_file, data):
        state = caffe_pb2.SolverState()
        try:
            state.ParseFromString(data)
        except Exception as e:
            raise SolverError(f"{state_file}: not a valid SolverState ({e})") from None
        self._check_counters(state_file, state.iter, state.current_step)
        shapes = self._history_shapes()
        if len(state.history) != len(shapes):
            raise self._history_count_error(state_file, len(state.history))
        history = []
        for i, (bp, shape) in enumerate(zip(state.history, shapes)):
            found, legacy = weights_io.proto_shape(bp)
            if not weights_io.shape_fits(shape, found, legacy):     # before converting
                raise SolverError(f"{state_file}: history blob {i} has shape {list(found)}, "
                                  f"its param has {list(shape)}")
            try:
                history.append(prototxt.blob_to_array(bp).reshape(shape))
            except SymnetError as e:
                raise SolverError(f"{state_file}: history blob {i}: {e}") from None
        try:
            extra = _top_level_field(data, EXTRA_FIELD)
        except SolverError as e:
            raise SolverError(f"{state_file}: {e}") from None
        learned = state.learned_net if state.HasField("learned_net") else ""
        if isinstance(learned, bytes):      # not UTF-8: protobuf hands the raw bytes over
            learned = os.fsdecode(learned)
        return {"iter": int(state.iter), "current_step": int(state.current_step),
                "learned_net": learned, "history": history, "extra": extra}

    def _read_state_hdf5(self, state_file):
        """Caffe's SnapshotSolverStateToHDF5 layout: datasets ``iter``, ``current_step``
        and ``learned_net``, group ``history`` of datasets "0", "1", ..."""
        try:
            import h5py
        except ImportError:
            raise SolverError(f"{state_file}: reading an HDF5 solver state needs h5py: "
                              "pip install 'symnet[data]'") from None
        try:
            weights_io.check_hdf5(state_file)     # the superblock, before the library
            f = h5py.File(state_file, "r")
        except Exception as e:
            raise SolverError(f"{state_file}: not a readable HDF5 solver state "
                              f"({type(e).__name__}: {e})") from None
        try:
            with f:
                it = _h5_int(h5py, f, "iter", state_file)
                current_step = _h5_int(h5py, f, "current_step", state_file)
                self._check_counters(state_file, it, current_step)
                learned = ""
                if "learned_net" in f:
                    learned = _h5_str(h5py, f["learned_net"], state_file)
                group = f.get("history")
                if not isinstance(group, h5py.Group):
                    raise SolverError(f"{state_file}: no group 'history' (not a solver "
                                      "state in Caffe's HDF5 form)")
                shapes = self._history_shapes()
                names = list(group.keys())
                if len(names) != len(shapes):
                    raise self._history_count_error(state_file, len(names))
                expected = [str(i) for i in range(len(shapes))]
                if sorted(names) != sorted(expected):
                    raise SolverError(f"{state_file}: the history group holds "
                                      f"{sorted(names)}, expected {expected}")
                history = []
                for i, shape in enumerate(shapes):
                    try:
                        history.append(weights_io.hdf5_array(
                            h5py, group[str(i)], shape, f"{state_file}: history blob {i}"))
                    except weights_io.WeightsError as e:
                        raise SolverError(str(e)) from None
        except SymnetError:
            raise
        except Exception as e:       # a damaged file: h5py's OSError, KeyError, ...
            raise SolverError(f"{state_file}: cannot read the HDF5 solver state "
                              f"({type(e).__name__}: {e})") from None
        return {"iter": it, "current_step": current_step, "learned_net": learned,
                "history": history, "extra": None}

    def _check_resume_data(self, state_file, plan):
        """Check symnet's resume data against the nets; plan["data"] becomes the data
        positions to set [(where, feeder, position)], plan["net_iteration"] the train
        net's counter."""
        extra, notes = plan["extra"], plan["warnings"]
        where = f"{state_file}: symnet resume data"
        nets = [("the train net", self.net)] + \
            [(f"test net #{k}", n) for k, n in enumerate(self.test_nets)]
        plan["data"] = []
        if extra is None:
            plan["net_iteration"] = plan["iter"] * self.param.iter_size
            layers = [f"'{layer.name}' ({label})" for label, net in nets
                      for layer, _ in getattr(net, "_feeders", [])]
            if layers:
                notes.append(f"{state_file} holds no symnet resume data (a Caffe snapshot?):"
                             f" the data layers {', '.join(layers)} start from their current "
                             "position, not where the snapshot left them")
            return
        try:
            info = json.loads(extra.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise SolverError(f"{where} (field {EXTRA_FIELD}) is not JSON: {e}") from None
        if not isinstance(info, dict):
            raise SolverError(f"{where} is {_kind(info)}, expected an object")
        if info.get("format") != EXTRA_FORMAT:
            raise SolverError(f"{where}: format {info.get('format')!r}, expected "
                              f"{EXTRA_FORMAT!r}")
        if "type" in info and info["type"] != self.type:
            notes.append(f"{state_file} was written by a {info['type']!r} solver, this is "
                         f"a {self.type!r} solver: its histories are taken as they are")
        it = info.get("net_iteration", plan["iter"] * self.param.iter_size)
        if not _is_int(it) or it < 0:
            raise SolverError(f"{where}: net_iteration is {it!r}, expected an integer "
                              ">= 0")
        plan["net_iteration"] = int(it)
        data = info.get("data", {})
        if not isinstance(data, dict):
            raise SolverError(f"{where}: 'data' is {_kind(data)}, expected an object")
        train = data.get("train", {})
        test = data.get("test", [])
        if not isinstance(train, dict):
            raise SolverError(f"{where}: 'data.train' is {_kind(train)}, expected an "
                              "object")
        if not isinstance(test, list) or not all(isinstance(t, dict) for t in test):
            raise SolverError(f"{where}: 'data.test' must be a list of objects, one per "
                              "test net")
        if len(test) != len(self.test_nets):
            notes.append(f"{state_file} holds data positions for {len(test)} test nets, "
                         f"the solver has {len(self.test_nets)}: test nets without one "
                         "start from their current position")
        saved_all = [train] + test + [{}] * max(0, len(self.test_nets) - len(test))
        for (label, net), saved in zip(nets, saved_all):
            names = set()
            for layer, feeder in getattr(net, "_feeders", []):
                names.add(layer.name)
                pos = saved.get(layer.name)
                here = f"data layer '{layer.name}' ({layer.type}) of {label}"
                if not _can_seek(layer, feeder):
                    notes.append(f"{state_file}: the source of {here} cannot seek: it "
                                 "continues from its current position, not where the "
                                 "snapshot left it")
                    continue
                if pos is None:
                    notes.append(f"{state_file} holds no position for {here}: it starts "
                                 "from its current position")
                    continue
                current = feeder.state()
                if _has_known_form(layer):
                    _check_form(pos, current, f"{where}: the position of {here}", "")
                plan["data"].append((here, feeder, pos))
            extra_names = sorted(set(saved) - names)
            if extra_names:
                notes.append(f"{state_file} holds positions of data layers {label} does "
                             f"not have: {', '.join(extra_names)} (ignored)")

    # -- changing (all checked)
    def _apply_state(self, plan):
        done = []
        try:
            for here, feeder, pos in plan["data"]:
                done.append((feeder, feeder.state()))
                feeder.set_state(copy.deepcopy(pos))
        except Exception as e:
            for feeder, previous in reversed(done):     # put the positions back
                try:
                    feeder.set_state(previous)
                except Exception:
                    log.error("could not put the position of a data layer back after a "
                              "failed restore", exc_info=True)
            raise SolverError(f"cannot restore the position of {here}: "
                              f"{type(e).__name__}: {e}") from e
        weights_io.write_trained_layers(plan["weights"])
        for a, dst in zip(plan["history"], self.history):
            dst[...] = a
        self.iter = plan["iter"]
        self.current_step = plan["current_step"]
        self.net.iteration = plan["net_iteration"]

    @staticmethod
    def _learned_net_path(path, state_file):
        if os.path.isfile(path):
            return path
        alt = os.path.join(os.path.dirname(os.path.abspath(state_file)),
                           os.path.basename(path))
        if os.path.isfile(alt):
            return alt
        raise SolverError(f"{state_file}: its learned_net '{path}' was not found (nor "
                          f"'{alt}')")

    def copy_weights(self, paths):
        """Copy .caffemodel weights (a path, or comma-separated paths) into the train
        and test nets, as caffe train --weights."""
        for path in str(paths).split(","):
            path = path.strip()
            if not path:
                continue
            self.net.copy_from(path)
            for n in self.test_nets:
                n.copy_from(path)

    def close(self):
        for n in [self.net] + list(self.test_nets):
            n.close()


def _piecewise_clip(s, c):
    import sympy as sp
    norm = sp.sqrt(s)
    return sp.Piecewise((c / norm, norm > c), (sp.Integer(1), True))


def _loss_note(o):
    w = o.get("loss_weight", 0.0)
    return f" (* {w:g} = {w * o['value']:.6g} loss)" if w else ""


def net_loss(net) -> float:
    """Caffe's Forward loss: sum of loss_weight times the sum of each loss top."""
    loss = 0.0
    for layer in net._layers:
        for name, w in zip(layer.tops, layer.loss_weights):
            if w:
                loss += float(w) * float(net.blobs[name].read_data().sum(dtype=np.float64))
    return loss


def output_scores(net):
    """One record per element of each output blob: name, value, loss_weight."""
    weights = {}
    for layer in net._layers:
        for name, w in zip(layer.tops, layer.loss_weights):
            if w:
                weights[name] = float(w)
    out = []
    for name in net.outputs:
        for v in np.asarray(net.blobs[name].read_data(), dtype=np.float64).reshape(-1):
            out.append({"name": name, "value": float(v), "loss_weight": weights.get(name, 0.0)})
    return out


# ----------------------------------------------------------------------------- data state

def _data_states(net) -> dict:
    """{data layer: position} for the net's data layers whose source has state(): the
    prefetcher's (state after the last batch handed out) when it has one, else the
    source's own (which runs ahead by the batches prefetched)."""
    out = {}
    for layer, feeder in getattr(net, "_feeders", []):
        if hasattr(feeder, "state"):
            out[layer.name] = feeder.state()
            continue
        source = getattr(layer, "data_source", None)
        if source is not None and hasattr(source, "state"):
            out[layer.name] = source.state()
    return out


class ResumeWarning(UserWarning):
    """A restored solver will not continue exactly as the run that wrote the state."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(v):
    """What a JSON value is, with its article: "null", "an integer", "a list"."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if _is_int(v):
        return "an integer"
    return {float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(v), f"a {type(v).__name__}")


def _can_seek(layer, feeder):
    """Whether the data layer's position can be saved and set."""
    source = getattr(layer, "data_source", None) or getattr(feeder, "source", None)
    if not callable(getattr(source, "set_state", None)) or \
            not callable(getattr(feeder, "set_state", None)):
        return False
    fn = getattr(source, "fn", None)          # a shared library may lack set_state
    if isinstance(fn, dict) and "next" in fn and fn.get("set_state") is None:
        return False
    return feeder.state() is not None


def _has_known_form(layer):
    """Built-in sources and shared-library sources: their positions have a fixed form."""
    from .data.base import Source
    from .data.external import SharedLibrarySource
    return isinstance(getattr(layer, "data_source", None), (Source, SharedLibrarySource))


def _check_form(saved, current, where, field):
    """``saved`` has the form of ``current`` (a position of the same source): the same
    keys, the same kinds of values, integers >= 0 where the current one is; the type
    names equal."""
    name = field or "the position"
    if isinstance(current, dict):
        if not isinstance(saved, dict):
            raise SolverError(f"{where}: {name} is {_kind(saved)}, expected an object")
        if field == "" and saved.get("type") != current.get("type"):
            raise SolverError(f"{where}: saved by a source of type {saved.get('type')!r}, the "
                              f"layer's source is a {current.get('type')!r} source")
        if set(saved) != set(current):
            missing = sorted(set(current) - set(saved))
            unknown = sorted(set(saved) - set(current))
            raise SolverError(f"{where}: {name} has keys {sorted(saved)}, expected "
                              f"{sorted(current)}" + (f" (missing {missing})" if missing
                                                      else "")
                              + (f" (unknown {unknown})" if unknown else ""))
        for k in current:
            _check_form(saved[k], current[k], where, f"{field}.{k}" if field else k)
    elif current is None or saved is None:
        return                                  # an optional value (a key not yet read)
    elif isinstance(current, bool):
        if not isinstance(saved, bool):
            raise SolverError(f"{where}: {name} is {saved!r}, expected true or false")
    elif _is_int(current):
        if not _is_int(saved) or (current >= 0 and saved < 0):
            raise SolverError(f"{where}: {name} is {saved!r}, expected an integer"
                              + (" >= 0" if current >= 0 else ""))
    elif isinstance(current, float):
        if isinstance(saved, bool) or not isinstance(saved, (int, float)) or \
                not math.isfinite(saved):
            raise SolverError(f"{where}: {name} is {saved!r}, expected a finite number")
    elif isinstance(current, str):
        if not isinstance(saved, str):
            raise SolverError(f"{where}: {name} is {saved!r}, expected a string")
        if field == "state" and not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", saved):
            raise SolverError(f"{where}: {name} is not hexadecimal")
    elif isinstance(current, list):
        if not isinstance(saved, list) or len(saved) != len(current):
            raise SolverError(f"{where}: {name} is {_kind(saved)}"
                              + (f" of {len(saved)} items" if isinstance(saved, list) else "")
                              + f", expected a list of {len(current)}")
        for i, (s, c) in enumerate(zip(saved, current)):
            _check_form(s, c, where, f"{field}[{i}]")


def _h5_int(h5py, f, name, state_file):
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        raise SolverError(f"{state_file}: no dataset '{name}'")
    if node.dtype.kind not in "iu" or node.size != 1 or len(node.shape or ()) > 1:
        raise SolverError(f"{state_file}: '{name}' holds {node.dtype} of shape "
                          f"{list(node.shape or ())}, expected one integer")
    value = int(np.asarray(node[()]).reshape(-1)[0])
    if not -2 ** 31 <= value < 2 ** 31:
        raise SolverError(f"{state_file}: '{name}' is {value}, beyond a 32-bit integer")
    return value


def _h5_str(h5py, node, state_file):
    if not isinstance(node, h5py.Dataset) or node.size != 1:
        raise SolverError(f"{state_file}: 'learned_net' is not a string dataset")
    value = np.asarray(node[()]).reshape(-1)[0] if node.shape else node[()]
    if isinstance(value, bytes):
        return os.fsdecode(value)           # a path, as the file system spells it
    if isinstance(value, str):
        return value
    raise SolverError(f"{state_file}: 'learned_net' holds {node.dtype}, expected a "
                      "string")


# ----------------------------------------------------------------------------- solvers

class SGDSolver(Solver):
    type = "SGD"

    def _rule(self, p, g, hs, lr, lm, scalars):
        m = _f32(self.param.momentum)
        h = F.elementwise(lambda h, g, r: m * h + (r * lm) * g, hs[0], g, lr,
                          label="sgd_history")
        return F.elementwise(lambda p, h: p - h, p, h, label="sgd_param"), [h]


class NesterovSolver(Solver):
    type = "Nesterov"

    def _rule(self, p, g, hs, lr, lm, scalars):
        m = _f32(self.param.momentum)
        h = F.elementwise(lambda h, g, r: m * h + (r * lm) * g, hs[0], g, lr,
                          label="nesterov_history")
        upd = F.elementwise(lambda hn, ho: (1 + m) * hn - m * ho, h, hs[0],
                            label="nesterov_step")
        return F.elementwise(lambda p, u: p - u, p, upd, label="nesterov_param"), [h]


class AdaGradSolver(Solver):
    type = "AdaGrad"

    def _check_type_param(self):
        if self.param.momentum != 0:
            raise SolverError("Momentum cannot be used with AdaGrad.")

    def _rule(self, p, g, hs, lr, lm, scalars):
        import sympy as sp
        d = _f32(self.param.delta)
        h = F.elementwise(lambda h, g: h + g * g, hs[0], g, label="adagrad_history")
        new = F.elementwise(lambda p, g, h, r: p - (r * lm) * (g / (sp.sqrt(h) + d)), p, g, h, lr,
                            label="adagrad_param")
        return new, [h]


class RMSPropSolver(Solver):
    type = "RMSProp"

    def _check_type_param(self):
        p = self.param
        if p.momentum != 0:
            raise SolverError("Momentum cannot be used with RMSProp.")
        if not 0 <= p.rms_decay <= 1:
            raise SolverError(f"rms_decay should lie between 0 and 1, got {p.rms_decay}")

    def _rule(self, p, g, hs, lr, lm, scalars):
        import sympy as sp
        d = _f32(self.param.delta)
        rd = _f32(self.param.rms_decay)
        one_minus = _f32(np.float32(1) - np.float32(rd))
        h = F.elementwise(lambda h, g: rd * h + one_minus * (g * g), hs[0], g,
                          label="rmsprop_history")
        new = F.elementwise(lambda p, g, h, r: p - (r * lm) * (g / (sp.sqrt(h) + d)), p, g, h, lr,
                            label="rmsprop_param")
        return new, [h]


class AdaDeltaSolver(Solver):
    type = "AdaDelta"
    n_histories = 2

    def _rule(self, p, g, hs, lr, lm, scalars):
        import sympy as sp
        m = _f32(self.param.momentum)
        om = _f32(np.float32(1) - np.float32(m))
        d = _f32(self.param.delta)
        h = F.elementwise(lambda h, g: om * (g * g) + m * h, hs[0], g,
                          label="adadelta_history")
        u = F.elementwise(lambda g, h2, h: g * sp.sqrt((h2 + d) / (h + d)), g, hs[1], h,
                          label="adadelta_step")
        h2 = F.elementwise(lambda h2, u: om * (u * u) + m * h2, hs[1], u,
                           label="adadelta_history2")
        new = F.elementwise(lambda p, u, r: p - (r * lm) * u, p, u, lr, label="adadelta_param")
        return new, [h, h2]


class AdamSolver(Solver):
    type = "Adam"
    n_histories = 2

    def _lr_scalars(self, rate):
        b1, b2 = self.param.momentum, self.param.momentum2
        t = self.iter + 1
        b1, b2 = float(np.float32(b1)), float(np.float32(b2))
        return [_f32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))]

    def _rule(self, p, g, hs, lr, lm, scalars):
        import sympy as sp
        b1, b2 = _f32(self.param.momentum), _f32(self.param.momentum2)
        ob1, ob2 = _f32(np.float32(1) - np.float32(b1)), _f32(np.float32(1) - np.float32(b2))
        eps = _f32(self.param.delta)
        m = F.elementwise(lambda m, g: ob1 * g + b1 * m, hs[0], g, label="adam_m")
        v = F.elementwise(lambda v, g: ob2 * (g * g) + b2 * v, hs[1], g, label="adam_v")
        new = F.elementwise(lambda p, m, v, r, c: p - ((r * lm) * c) * (m / (sp.sqrt(v) + eps)),
                            p, m, v, lr, scalars[0], label="adam_param")
        return new, [m, v]


SOLVERS = {"SGD": SGDSolver, "Nesterov": NesterovSolver, "AdaGrad": AdaGradSolver,
           "RMSProp": RMSPropSolver, "AdaDelta": AdaDeltaSolver, "Adam": AdamSolver}


def get_solver(solver, **kwargs) -> Solver:
    """The solver of a solver prototxt (path, text or SolverParameter), of its
    ``type`` (``solver_type`` upgraded); keyword arguments as ``Solver``."""
    filename = os.fspath(solver) if isinstance(solver, (str, os.PathLike)) and \
        os.path.exists(solver) else None
    param = read_solver_param(filename or solver)
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise SolverError(f'unknown solver type "{param.type}"; expected one of '
                          + ", ".join(f'"{t}"' for t in SOLVERS))
    return cls(filename or param, **kwargs)
