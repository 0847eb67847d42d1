"""pycaffe's ``caffe.pycaffe``: the Net and solver classes scripts use."""
from __future__ import annotations

from ..net import Net as _Net
from ..solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,  # noqa: F401
                      RMSPropSolver, SGDSolver, get_solver)

# the backend new nets run on (set_mode_cpu / set_mode_gpu); None: the default backend
_mode = {"backend": None, "device": 0}


class Net(_Net):
    """pycaffe's Net: ``Net(model, phase)``, ``Net(model, weights, phase)`` or
    ``Net(model, phase, weights=..., level=..., stages=[...])``; runs on the backend
    ``caffe.set_mode_cpu()`` / ``caffe.set_mode_gpu()`` chose."""

    def __init__(self, model, *args, **kwargs):
        kwargs.setdefault("backend", _mode["backend"])
        super().__init__(model, *args, **kwargs)


__all__ = ["Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "get_solver"]
