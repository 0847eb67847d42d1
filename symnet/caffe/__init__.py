"""pycaffe's API on symnet: ``import symnet.caffe as caffe`` and a pycaffe script runs.

    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = image
    out = net.forward()

``caffe.proto.caffe_pb2``, ``caffe.io``, ``caffe.NetSpec`` with ``caffe.layers`` and
``caffe.params``, ``caffe.draw``, ``caffe.coord_map``, ``caffe.Classifier`` and
``caffe.Detector`` work as in pycaffe. ``install_alias()`` makes a plain ``import
caffe`` give this package (``symnet run script.py`` runs a script with it installed).
"""
from __future__ import annotations

import logging
import time as _time
import warnings as _warnings

from .. import data as _data
from .. import fillers as _fillers
from .. import functions as _functions
from .. import set_log_level as _set_log_level
from ..function import BACKENDS
from ..layers import load_plugins as _load_plugins
from ..layers import registry as _registry
from ..net import TEST, TRAIN
from ..pylayer import BlobVec as _BlobVec
from ..runtime import devices as _devices
from ..runtime.blob import Blob
from ..runtime.cuda import INSTALL_HINT as _CUDA_INSTALL_HINT
from . import io, proto  # noqa: F401
from .alias import install_alias, uninstall_alias  # noqa: F401
from .net_spec import NetSpec, layers, params, to_proto  # noqa: F401
from .proto import caffe_pb2  # noqa: F401
from .pycaffe import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,  # noqa: F401
                      Net, RMSPropSolver, SGDSolver, _mode, get_solver)

# The pycaffe API level this package follows (Caffe 1.0); symnet's own version is
# symnet.__version__.
__version__ = "1.0.0"

_log = logging.getLogger("symnet.caffe")
_gpu_warned = False


def set_mode_cpu():
    _mode["backend"] = "cpu"


def set_mode_gpu():
    """Run new nets on the cuda backend. Where no GPU is usable this warns once and
    new nets stay on the CPU (pycaffe scripts call it unconditionally)."""
    global _gpu_warned
    if _devices.cuda_usable():
        _mode["backend"] = "cuda"
        return
    if not _gpu_warned:
        _warnings.warn(f"caffe.set_mode_gpu: no usable CUDA device, running on the CPU "
                       f"({_CUDA_INSTALL_HINT})", RuntimeWarning, stacklevel=2)
        _gpu_warned = True


def set_device(device_id):
    _mode["device"] = int(device_id)


_filler_seed = getattr(_fillers, "set_random_seed", None)


def set_random_seed(seed):
    """Seed the random streams weight fillers (and random graph ops) draw from."""
    _functions.set_seed(seed)
    if _filler_seed is not None:
        _filler_seed(seed)


def solver_count():
    """Number of solvers training together: the size of the MPI world under ``mpiexec``
    or ``srun`` (see :mod:`symnet.parallel`), else 1."""
    from .. import parallel
    return parallel.world().size


def solver_rank():
    """This solver's rank in its group: the MPI rank under ``mpiexec`` or ``srun``, else
    0."""
    from .. import parallel
    return parallel.world().rank


def set_solver_count(count):
    """pycaffe's multi-GPU scripts set the count themselves; symnet's solvers are the
    MPI world's ranks, so only that count is accepted."""
    from .. import parallel
    size = parallel.world().size
    if int(count) != size:
        raise ValueError(f"set_solver_count({count}): symnet trains on the ranks mpiexec "
                         f"or srun starts, {size} here (run the script under "
                         f"'mpiexec -n {count} python ...')")


def set_solver_rank(rank):
    """Accepted when it is this process's MPI rank (see :func:`set_solver_count`)."""
    from .. import parallel
    mine = parallel.world().rank
    if int(rank) != mine:
        raise ValueError(f"set_solver_rank({rank}): this process is rank {mine} of the "
                         "MPI world (symnet's solvers are its ranks)")


def set_multiprocess(multiprocess):
    if multiprocess:
        raise ValueError("set_multiprocess: symnet trains with one solver only")


def has_nccl():
    return False


def layer_type_list():
    """Every layer type a net can use (symnet's registered layers, data layers, Input
    and Python), sorted as Caffe's layer registry lists them (byte order)."""
    _load_plugins()
    types = set(_registry.registered()) | set(_data._FACTORIES) | {"Input", "Python"}
    return sorted(types)


class Timer:
    """pycaffe's Timer: ``start()``, ``stop()``, ``ms`` (the milliseconds between
    them; while running, up to now)."""

    def __init__(self):
        self._start = self._stop = None

    def start(self):
        self._start, self._stop = _time.perf_counter(), None

    def stop(self):
        if self._start is not None:
            self._stop = _time.perf_counter()

    @property
    def ms(self):
        if self._start is None:
            return 0.0
        end = self._stop if self._stop is not None else _time.perf_counter()
        return 1000.0 * (end - self._start)


# glog's levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level=0, stderr=True):
    """pycaffe's init_log: show symnet's log lines at glog ``level`` (0 INFO,
    1 WARNING, 2 ERROR, 3 FATAL) and above; ``stderr=False`` shows none."""
    if not stderr:
        _set_log_level(logging.CRITICAL + 10)
    else:
        _set_log_level(_GLOG_LEVELS.get(int(level), logging.INFO))


def log(message):
    """pycaffe's log: one INFO line in symnet's log."""
    _log.info("%s", message)


class Layer:
    """Base class of Caffe Python layers (pycaffe's ``caffe.Layer``): built with the
    LayerParameter; ``param_str``, ``phase`` and ``blobs`` are set for it."""

    type = "Python"            # what Caffe's Layer::type() gives a Python layer

    def __init__(self, param=None):
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = TEST
        self.blobs = _BlobVec()

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


def __getattr__(name):
    # submodules that need more than the core (imported on first use)
    if name in ("draw", "coord_map", "classifier", "detector", "alias", "pycaffe"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    if name == "Classifier":
        from .classifier import Classifier
        return Classifier
    if name == "Detector":
        from .detector import Detector
        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Net", "Layer", "Blob", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "NetSpec", "layers", "params", "to_proto", "io", "proto",
           "caffe_pb2", "BACKENDS", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver", "Classifier",
           "Detector", "Timer", "init_log", "log", "layer_type_list", "solver_count",
           "solver_rank", "install_alias", "__version__"]
