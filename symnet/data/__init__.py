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

Data-parallel training (sharding)
---------------------------------
When N processes train one model data-parallel, rank r of N reads the records r, r+N,
r+2N, ... of every data source's record stream (Caffe's parallel data layers, their
``Skip()``). The stream is the sequence of records one process would read, across
epochs: in key order for Data (LMDB), list order for ImageData, file then row order for
HDF5Data, array order for MemoryData; with ``shuffle`` each epoch's permutation comes
from the layer's seed, which must be the same on every rank (the same
``set_seed``/``random_seed``), so every rank permutes alike and the ranks split one
shuffled stream. Hence at every iteration the N ranks at batch B together read exactly
the N*B records one process at batch N*B reads (record k of that batch is read by rank
k mod N, as item k // N of its batch).

The world is a :class:`World` ``(rank, size)``. ``create(..., world=World(r, n))``
passes it explicitly; without ``world=``, ``create`` uses the process's world, set by
``set_world(rank, size)`` (default ``World(0, 1)``: no sharding), which a solver under
MPI calls once, before it builds its nets. As in Caffe, only TRAIN-phase sources are
sharded: TEST nets are run by rank 0 alone and read every record. A factory registered
for a new type receives the world when it has a ``world`` parameter; a source of a
type whose factory has none cannot be sharded, and ``create`` refuses it when the world
has more than one rank.

Per source: Data, HDF5Data, ImageData and MemoryData read their rank's records (with
MemoryData, every rank is given the same arrays with ``set_input_arrays`` and reads its
share of them); DummyData generates its tops, there are no records to share: its random
fillers draw from the rank's own generator, so the ranks draw different values, and its
constant tops are alike on every rank; WindowData samples windows at random and draws
from the rank's own generator too. Random transforms (crop, mirror) draw from the
rank's own generator: the stream generator of rank r of N > 1 is that of
``SeedSequence(seed, spawn_key=(0, r, N))`` (rank 0 of 1 keeps ``spawn_key=(0,)``).
ExternalData sources are told the world (see :mod:`symnet.data.external`).

Positions: a sharded source's ``state()`` holds ``"shard": {"rank": r, "size": N}`` (a
source of one process has no such key, as before), so a resume on the same N continues
exactly; ``set_state`` refuses a position saved for another rank or another number of
ranks with a :class:`DataError` saying so.
"""
from __future__ import annotations

_FACTORIES = {}
_WORLD = [None]            # set below, once World is imported


def register(type_name):
    def deco(factory):
        _FACTORIES[type_name] = factory
        return factory
    return deco


def is_data_layer(type_name) -> bool:
    return type_name in _FACTORIES


def create(layer_param, phase, base_dir, seed=None, world=None):
    """The source of a data layer; ``seed`` (optional) replaces the layer's default. A
    factory with a ``seed`` parameter gets it; otherwise the source is reseeded.
    ``world`` (a :class:`World` or ``(rank, size)``; default: the process's world, see
    :func:`set_world`) shards a TRAIN-phase source; TEST-phase sources are not sharded."""
    factory = _FACTORIES[layer_param.type]
    world = get_world() if world is None else World.of(world)
    if str(phase) != "TRAIN":
        world = World(0, 1)
    kwargs = {}
    if _takes(factory, "world"):
        kwargs["world"] = world
    elif world.size > 1:
        raise DataError(f"the {layer_param.type} source cannot be sharded across "
                        f"{world.size} processes: its factory has no 'world' parameter "
                        "(see symnet.data: data-parallel training)")
    if seed is not None and _takes(factory, "seed"):
        return factory(layer_param, phase, base_dir, seed=int(seed), **kwargs)
    source = factory(layer_param, phase, base_dir, **kwargs)
    if seed is not None:
        reseed = getattr(source, "reseed", None)
        if not callable(reseed):
            raise DataError(f"the {layer_param.type} source cannot be seeded (no reseed())")
        reseed(seed)
    return source


def _takes(factory, name) -> bool:
    import inspect
    try:
        return name in inspect.signature(factory).parameters
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


def set_world(rank: int, size: int) -> World:
    """The process's world: TRAIN-phase sources that :func:`create` makes afterwards
    without ``world=`` read the share of rank ``rank`` of ``size`` processes (Caffe's
    ``solver_rank`` / ``solver_count``). Returns the previous world. ``set_world(0, 1)``
    turns sharding off."""
    previous = _WORLD[0]
    _WORLD[0] = World.of((rank, size))
    return previous


def get_world() -> World:
    """The process's world (``World(0, 1)`` unless :func:`set_world` was called)."""
    return _WORLD[0]


from .base import DataError, Source, World, layer_seed, set_base_seed  # noqa: E402
from ..runtime.prefetch import DataSourceError, Prefetcher  # noqa: E402
_WORLD[0] = World(0, 1)
from . import builtin, external, window  # noqa: E402,F401  (register the layer types)
from . import hdf5_output  # noqa: E402,F401  (the HDF5Output layer)

__all__ = ["register", "is_data_layer", "create", "prefetch_depth", "set_seed", "layer_seed",
           "set_world", "get_world", "World", "DataError", "Source", "DataSourceError",
           "Prefetcher"]
