"""Caffe's layer catalogue as symbolic layers, and the machinery to declare more."""
from .registry import (LayerContext, LayerError, apply, context, get, layer, layer_param,
                       registered, state_update)
from . import activation, loss, vision  # noqa: F401 - register Caffe's layers
from . import neuron  # noqa: F401 - ELU ... Swish, Eltwise
from . import norm  # noqa: F401 - PReLU, BatchNorm, Scale, Bias, MVN, LRN, Embed
from . import shape  # noqa: F401 - Concat, Slice, Split, Flatten, Reshape, Crop, Tile, ...
from . import losses  # noqa: F401 - SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss, ...
from . import spatial  # noqa: F401 - SPP, Im2col
from . import recurrent  # noqa: F401 - RNN, LSTM, LSTMUnit

__all__ = ["LayerContext", "LayerError", "apply", "context", "get", "layer", "layer_param",
           "registered", "state_update"]

_plugins_loaded = False


def load_plugins():
    """Import the layer modules installed packages declare in the ``symnet.layers``
    entry-point group (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points
    for ep in entry_points(group="symnet.layers"):
        try:
            ep.load()
        except Exception as e:
            raise LayerError(f"layer plugin '{ep.name}' ({ep.value}) failed to load: "
                             f"{type(e).__name__}: {e}") from e
