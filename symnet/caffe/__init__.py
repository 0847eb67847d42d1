"""pycaffe's API on symnet: ``import symnet.caffe as caffe`` and a pycaffe script runs.

    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = image
    out = net.forward()

``caffe.proto.caffe_pb2``, ``caffe.io``, ``caffe.NetSpec`` with ``caffe.layers`` and
``caffe.params`` work as in pycaffe.
"""
from __future__ import annotations

from ..function import BACKENDS
from ..net import TEST, TRAIN
from ..net import Net as _Net
from ..runtime import devices as _devices
from ..runtime.blob import Blob
from . import io, proto  # noqa: F401
from .net_spec import NetSpec, layers, params, to_proto  # noqa: F401
from .proto import caffe_pb2  # noqa: F401
from ..solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,  # noqa: F401
                      RMSPropSolver, SGDSolver, get_solver)

_mode = {"backend": None, "device": 0}


def set_mode_cpu():
    _mode["backend"] = "cpu"


def set_mode_gpu():
    """Run new nets on the cuda backend; an error if no GPU is usable here."""
    if not _devices.cuda_usable():
        from ..runtime.cuda import INSTALL_HINT
        raise RuntimeError(f"set_mode_gpu: no usable CUDA device; {INSTALL_HINT}")
    _mode["backend"] = "cuda"


def set_device(device_id):
    _mode["device"] = int(device_id)


def set_random_seed(seed):
    from .. import functions
    functions.set_seed(seed)


class Layer:
    """Base class of Caffe Python layers (pycaffe's ``caffe.Layer``): built with the
    LayerParameter; ``param_str``, ``phase`` and ``blobs`` are set for it."""

    def __init__(self, param=None):
        from ..pylayer import BlobVec
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = TEST
        self.blobs = BlobVec()

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class Net(_Net):
    """pycaffe's Net: ``Net(model, phase)``, ``Net(model, weights, phase)`` or
    ``Net(model, phase, weights=..., level=..., stages=[...])``."""

    def __init__(self, model, *args, **kwargs):
        kwargs.setdefault("backend", _mode["backend"])
        super().__init__(model, *args, **kwargs)


__all__ = ["Net", "Layer", "Blob", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "NetSpec", "layers", "params", "to_proto", "io", "proto",
           "caffe_pb2", "BACKENDS", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver"]
