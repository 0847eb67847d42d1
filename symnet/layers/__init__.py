"""Caffe's layer catalogue as symbolic layers, and the machinery to declare more."""
from .registry import (LayerContext, LayerError, context, get, layer, layer_param,
                       registered, state_update)
from . import activation, loss, vision  # noqa: F401 - register Caffe's layers

__all__ = ["LayerContext", "LayerError", "context", "get", "layer", "layer_param",
           "registered", "state_update"]
