"""Data layers: sources that produce batches for a Net's data-layer tops.

The Net asks ``is_data_layer(type)``; for such a layer ``create(layer_param, phase,
base_dir)`` returns a source with ``top_shapes()`` and ``next_batch()`` (one float32
array per top), which the runtime's Prefetcher runs on a background thread.

Built in (:mod:`symnet.data.builtin`): DummyData, MemoryData (``set_arrays``), HDF5Data,
Data (LMDB) and ImageData, with Caffe's ``transform_param`` (:mod:`.transform`); and
ExternalData (:mod:`.external`): a Python class or a shared library with the C ABI of
``symnet_data.h``. A new layer type is one decorated factory::

    @symnet.data.register("MyData")
    def my_data(layer_param, phase, base_dir):     # phase "TRAIN" / "TEST"
        return MySource(...)

Sources may also have ``state()`` / ``set_state(dict)`` (their position, for solver
snapshots), ``reseed(seed)`` and ``close()``. Seeds: see :mod:`symnet.data.base`;
``set_seed(n)`` sets the base of every layer's default seed (do it before building nets).
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


def create(layer_param, phase, base_dir, seed=None):
    """The source of a data layer; ``seed`` (optional) replaces the layer's default. A
    factory with a ``seed`` parameter gets it; otherwise the source is reseeded."""
    factory = _FACTORIES[layer_param.type]
    if seed is not None and _takes_seed(factory):
        return factory(layer_param, phase, base_dir, seed=int(seed))
    source = factory(layer_param, phase, base_dir)
    if seed is not None:
        reseed = getattr(source, "reseed", None)
        if not callable(reseed):
            raise DataError(f"the {layer_param.type} source cannot be seeded (no reseed())")
        reseed(seed)
    return source


def _takes_seed(factory) -> bool:
    import inspect
    try:
        return "seed" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def prefetch_depth(layer_param) -> int:
    """``data_param.prefetch`` (Caffe's default 4)."""
    if layer_param.HasField("data_param") and layer_param.data_param.HasField("prefetch"):
        return max(1, int(layer_param.data_param.prefetch))
    return 4


def set_seed(seed: int):
    """The base of every data layer's default seed (0 unless set); sources made after
    this call use it (Caffe: ``Caffe::set_random_seed``, the solver's random_seed)."""
    set_base_seed(seed)


from .base import DataError, Source, layer_seed, set_base_seed  # noqa: E402
from ..runtime.prefetch import DataSourceError, Prefetcher  # noqa: E402
from . import builtin, external, window  # noqa: E402,F401  (register the layer types)
from . import hdf5_output  # noqa: E402,F401  (the HDF5Output layer)

__all__ = ["register", "is_data_layer", "create", "prefetch_depth", "set_seed", "layer_seed",
           "DataError", "Source", "DataSourceError", "Prefetcher"]
