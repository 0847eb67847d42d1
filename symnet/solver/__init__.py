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

The package reads like the pipeline: ``lr_policy`` (the rate), ``rules`` (the update
rule of each solver type, a table), ``update`` (the flat layout and the fused update),
``loop`` (the Solver class: Step, Solve, Test), ``nets`` (train and test nets),
``snapshot`` / ``restore`` / ``resume_data`` (solver states) and ``parallel`` (data-parallel
training under MPI).
"""
from __future__ import annotations

import os

from .common import SignalHandler, SolverAction, SolverError, log, read_solver_param, \
    _f32, _snapshot_prefix  # noqa: F401
from .loop import Solver
from .lr_policy import POLICIES, learning_rate  # noqa: F401
from .nets import net_loss, output_scores  # noqa: F401
from .resume_data import ResumeWarning, _check_form, _data_states  # noqa: F401
from .rules import RULES, UpdateRule  # noqa: F401
from .snapshot import (EXTRA_FIELD, EXTRA_FORMAT, TEMP_MAX_AGE, TEMP_SUFFIX,  # noqa: F401
                       _TEMP_RE, _encode_varint, _top_level_field, _varint,
                       sweep_stale_temps, write_files_atomically)


def _solver_class(type_name):
    """The Solver subclass of a type in ``RULES`` (pycaffe's SGDSolver, ...)."""
    return type(f"{type_name}Solver", (Solver,), {
        "type": type_name, "n_histories": RULES[type_name].n_histories,
        "__module__": __name__,
        "__doc__": f"Caffe's {type_name}Solver (the rule rules.RULES[{type_name!r}])."})


SGDSolver = _solver_class("SGD")
NesterovSolver = _solver_class("Nesterov")
AdaGradSolver = _solver_class("AdaGrad")
RMSPropSolver = _solver_class("RMSProp")
AdaDeltaSolver = _solver_class("AdaDelta")
AdamSolver = _solver_class("Adam")

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
