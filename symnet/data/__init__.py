"""Data layers: sources that produce batches for a Net's data-layer tops.

The Net asks ``is_data_layer(type)``; for such a layer ``create(layer_param, phase,
base_dir)`` returns a source with ``top_shapes()`` and ``next_batch()`` (one float32
array per top), which the runtime's Prefetcher runs on a background thread.
"""
from __future__ import annotations

_FACTORIES = {}


def register(type_name):
    def deco(factory):
        _FACTORIES[type_name] = factory
        return factory
    return deco


def is_data_layer(type_name) -> bool:
    return type_name in _FACTORIES


def create(layer_param, phase, base_dir):
    return _FACTORIES[layer_param.type](layer_param, phase, base_dir)


def prefetch_depth(layer_param) -> int:
    """``data_param.prefetch`` (Caffe's default 4)."""
    if layer_param.HasField("data_param") and layer_param.data_param.HasField("prefetch"):
        return max(1, int(layer_param.data_param.prefetch))
    return 4
