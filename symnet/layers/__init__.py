"""Caffe's layer catalogue as symbolic layers, and the machinery to declare more."""
from .registry import (LayerContext, LayerError, apply, context, get, layer, layer_param,
                       registered, state_update)
from . import activation, loss, vision  # noqa: F401 - register Caffe's layers
from . import neuron  # noqa: F401 - ELU ... Swish, Eltwise
from . import norm  # noqa: F401 - PReLU, BatchNorm, Scale, Bias, MVN, LRN, Embed
from . import shape  # noqa: F401 - Concat, Slice, Split, Flatten, Reshape, Crop, Tile, ...
from . import losses  # noqa: F401 - SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss, ...

__all__ = ["LayerContext", "LayerError", "apply", "context", "get", "layer", "layer_param",
           "registered", "state_update"]
