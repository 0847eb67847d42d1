"""What every part of the solver shares: its logger, errors, the signal actions and
the SolverParameter as read from a file."""
from __future__ import annotations

import logging
import os
import signal

import numpy as np

from ..errors import SymnetError
from ..formats import prototxt, upgrade
from ..formats.proto import caffe_pb2

log = logging.getLogger("symnet.solver")


class SolverError(SymnetError, ValueError):
    """A solver prototxt or solver state is wrong (the message says what and where)."""


class SolverAction:
    """What a signal asks for, as caffe's ``--sigint_effect`` / ``--sighup_effect``."""
    NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"
    ALL = ("none", "stop", "snapshot")


def _f32(x) -> float:
    return float(np.float32(x))


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

