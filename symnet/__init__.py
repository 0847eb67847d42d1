"""symnet: a symbolic graph compiler for neural networks that emits fused CUDA and C
kernels and runs Caffe networks.

    import numpy as np, symnet as sn
    x = sn.input("x", (2, 3))
    f = sn.function([x], [sn.sigmoid(x).sum()], backend="numpy")
"""
import logging as _logging
import os as _os
import sys as _sys


class _SymnetLogger(_logging.Logger):
    """The "symnet" logger. Until the user sets its level or configures logging
    (handlers on the root logger), it reports INFO and above, so training prints its
    progress on stderr as Caffe does; ``SYMNET_LOG=quiet`` (or ``set_log_level``)
    turns that off. Once the user configures logging, standard rules apply."""

    _explicit = _logging.NOTSET

    @property
    def level(self):
        if self._explicit != _logging.NOTSET:
            return self._explicit
        if _logging.getLogger().handlers:
            return _logging.NOTSET           # the user's configuration decides
        mode = _os.environ.get("SYMNET_LOG", "").strip().lower()
        if mode in ("quiet", "0", "off", "warning"):
            return _logging.WARNING
        if mode == "debug":
            return _logging.DEBUG
        return _logging.INFO

    @level.setter
    def level(self, value):
        self._explicit = value

    def isEnabledFor(self, level):           # no cache: the answer above can change
        return not self.disabled and level >= self.getEffectiveLevel()


class _DefaultHandler(_logging.Handler):
    """Writes symnet's records to stderr while nobody else handles them: no root
    handlers (the user configured no logging) and no other handler on "symnet"."""

    def emit(self, record):
        logger = _logging.getLogger("symnet")
        if _logging.getLogger().handlers or any(h is not self for h in logger.handlers):
            return
        try:
            _sys.stderr.write(self.format(record) + "\n")
            _sys.stderr.flush()
        except Exception:   # noqa: BLE001 - logging must not break training
            self.handleError(record)


def _install_default_logging():
    logger = _logging.getLogger("symnet")
    if not isinstance(logger, _SymnetLogger):
        explicit = logger.__dict__.pop("level", _logging.NOTSET)
        logger.__class__ = _SymnetLogger
        logger._explicit = explicit
    if not any(isinstance(h, _DefaultHandler) for h in logger.handlers):
        handler = _DefaultHandler()
        handler.setFormatter(_logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    _uncache_children()


def _uncache_children():
    # a child logger caches its level answers, but the root's configuration may
    # change between calls: symnet's children ask their parent each time
    for name, child in list(_logging.Logger.manager.loggerDict.items()):
        if name.startswith("symnet.") and type(child) is _logging.Logger:
            child.__class__ = _ChildLogger


class _ChildLogger(_logging.Logger):
    def isEnabledFor(self, level):
        return not self.disabled and level >= self.getEffectiveLevel()


def set_log_level(level):
    """The lowest level symnet logs: a logging level (``logging.INFO``), a name
    ("debug", "info", "warning", "error") or "quiet" (warnings and errors only);
    None goes back to the default (INFO unless SYMNET_LOG=quiet or logging is
    configured)."""
    if isinstance(level, str):
        name = level.strip().upper()
        name = "WARNING" if name == "QUIET" else name
        if not isinstance(_logging.getLevelName(name), int):
            raise ValueError(f"set_log_level: unknown level {level!r}")
        level = _logging.getLevelName(name)
    _logging.getLogger("symnet").setLevel(_logging.NOTSET if level is None else level)


_install_default_logging()

from . import fillers
from .autodiff import grad, vjp
from .errors import (GradientError, GraphError, ShapeError, SymnetError,
                     UnsupportedFunctionError)
from .function import Function, default_backend, function
from .functions import (abs, add, argmax, as_tensor, avg_pool2d, broadcast_to, clip,
                        concat, constant, conv2d, conv_transpose2d, cos, div, elementwise,
                        eq, erf, exp, flatten, gather, ge, gt, input, le, log, lt, matmul,
                        max, max_pool2d, maximum, mean, min, minimum, mul, ne, neg, ones,
                        pad, param, pool2d, pow, reshape, rsqrt, set_seed, sigmoid, sign, sin,
                        softplus, split, sqrt, stop_gradient, sub, sum, sum_to_shape, tanh, topk, transpose,
                        uniform, where, window_sum, zeros)
from .check import check_layer
from .gradcheck import gradcheck
from .graph import Graph, Tensor, default_graph, graph_scope
from .layers import context as layer_context
from .layers import layer, layer_param, state_update
from .net import TEST, TRAIN, Net
from .solver import ResumeWarning, get_solver

__version__ = "0.1.0"

_uncache_children()
