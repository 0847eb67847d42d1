"""What every built-in data source shares: seeding, position (state), path lookup.

Seeds
-----
A source draws every random number (shuffles, random crops, mirrors, DummyData fillers,
rand_skip) from numpy generators derived from one integer, ``source.seed``:

* the *stream* generator ``source.rng`` (PCG64 of ``SeedSequence(seed, spawn_key=(0,))``)
  draws per-batch randomness (crop offsets, mirror flags, fillers); its state is part of
  the source's position;
* the permutation of epoch ``e`` is drawn from ``SeedSequence(seed, spawn_key=(1, e, ...))``
  so it never needs storing: a restored position recomputes it.

``seed`` defaults to ``layer_seed(layer name, phase)``: ``SeedSequence([base, crc32(name),
0 for TRAIN / 1 for TEST])`` reduced to one 63-bit integer, where ``base`` is the value
given to :func:`symnet.data.set_seed` (0 unless set; the solver sets it from
``random_seed``). ``source.reseed(seed)`` starts the source over with another seed.

Position
--------
``state()`` returns a JSON-serialisable dict (type, seed, stream generator state, epoch,
cursor and what the source needs to find its place; ``shard`` for a sharded source);
``set_state(dict)`` puts the source back there, so the batch read next is the batch that
would have been read; it refuses a position of another shard.

Shards
------
``Source(..., world=World(rank, size))`` reads the records rank, rank + size, ... of its
stream (see :mod:`symnet.data`); subclasses step through their stream ``world.size``
records at a time and start at record ``world.rank``.
"""
from __future__ import annotations

import copy
import os
import zlib
from typing import NamedTuple

import numpy as np

from ..errors import SymnetError

_BASE_SEED = [0]
_PHASE_INDEX = {"TRAIN": 0, "TEST": 1}


class DataError(SymnetError, ValueError):
    """A data source's parameters or files are wrong (the message says what and where)."""


class World(NamedTuple):
    """Rank ``rank`` of ``size`` processes training one model data-parallel: a source
    of this rank reads the records rank, rank + size, rank + 2 size, ... of its stream
    (see :mod:`symnet.data`). ``World(0, 1)`` reads every record."""
    rank: int = 0
    size: int = 1

    @classmethod
    def of(cls, world) -> "World":
        """``world`` (a World, a ``(rank, size)`` pair or None for one process),
        checked: ``0 <= rank < size``."""
        if world is None:
            return cls(0, 1)
        try:
            rank, size = world
            if isinstance(rank, bool) or isinstance(size, bool):
                raise TypeError
            rank, size = int(rank), int(size)
        except (TypeError, ValueError):
            raise DataError(f"a data world is (rank, size), two integers; got "
                            f"{world!r}") from None
        if size < 1 or not 0 <= rank < size:
            raise DataError(f"a data world needs size >= 1 and 0 <= rank < size; got rank "
                            f"{rank}, size {size}")
        return cls(rank, size)

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size}"


def shard_of(state) -> World:
    """The shard a saved position was read with (one process when it has none)."""
    shard = state.get("shard") if isinstance(state, dict) else None
    if shard is None:
        return World(0, 1)
    if not isinstance(shard, dict):
        raise DataError(f"the saved position's shard is {shard!r}; expected "
                        "{'rank': r, 'size': n}")
    return World.of((shard.get("rank"), shard.get("size")))


def check_shard(state, world, who):
    """Refuse a position saved for another rank or another number of ranks."""
    saved = shard_of(state)
    if saved != world:
        def name(w):
            return "one process" if w.size == 1 else w.describe()
        raise DataError(f"{who}: the saved position was read as {name(saved)}, this source "
                        f"reads as {name(world)}; an exact resume needs the same number "
                        "of processes (and each rank its own position)")


def set_base_seed(seed: int):
    _BASE_SEED[0] = int(seed)


def base_seed() -> int:
    return _BASE_SEED[0]


def layer_seed(name: str, phase: str = "TRAIN", base: int | None = None) -> int:
    """The default seed of the data layer ``name`` in ``phase``."""
    base = _BASE_SEED[0] if base is None else int(base)
    entropy = [base & 0xFFFFFFFFFFFFFFFF, zlib.crc32(str(name).encode("utf-8")),
               _PHASE_INDEX.get(str(phase), 2)]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFFFFFFFFFFFFFF


def resolve_path(path: str, bases, what: str, *, directory=None) -> str:
    """``path`` as given when absolute; else the first of ``base/path`` for the ``bases``
    (e.g. the prototxt's folder, then the working directory, as Caffe) that exists.
    ``directory`` True/False also requires a folder / a file."""
    if not path:
        raise DataError(f"{what} is empty; give a path")
    path = os.path.expanduser(os.fspath(path))
    candidates = [path] if os.path.isabs(path) else \
        [os.path.normpath(os.path.join(b, path)) for b in dict.fromkeys(bases)]
    for c in candidates:
        if os.path.exists(c):
            if directory is True and not os.path.isdir(c):
                raise DataError(f"{what} '{c}' is a file; expected a folder")
            if directory is False and os.path.isdir(c):
                raise DataError(f"{what} '{c}' is a folder; expected a file")
            return c
    tried = ", ".join(f"'{c}'" for c in candidates)
    raise DataError(f"{what} '{path}' not found (looked at {tried})")


def search_bases(base_dir):
    """Where relative paths of a prototxt are looked up: its folder, then the working
    directory (Caffe's, since Caffe resolves paths against the working directory)."""
    return [base_dir or ".", os.getcwd()]


class Source:
    """Base class of the built-in sources. Subclasses set ``type_name``, implement
    ``top_shapes``, ``next_batch``, ``_position() -> dict`` / ``_set_position(dict)``
    and ``_rewind()`` (go to the first batch; may draw from ``self.start_rng()``)."""

    type_name = "Source"

    def __init__(self, name="data", phase="TRAIN", seed=None, world=None):
        self.name, self.phase = str(name), str(phase)
        self.world = World.of(world)
        self._set_seed(seed)

    # ---------------------------------------------------------------- seeding
    def _set_seed(self, seed):
        self.seed = layer_seed(self.name, self.phase) if seed is None else int(seed)
        key = (0,) if self.world.size == 1 else (0, self.world.rank, self.world.size)
        self.rng = np.random.Generator(np.random.PCG64(
            np.random.SeedSequence(self.seed, spawn_key=key)))

    def epoch_rng(self, *keys) -> np.random.Generator:
        """The generator for permutations of epoch ``keys[0]`` (and more keys)."""
        return np.random.Generator(np.random.PCG64(
            np.random.SeedSequence(self.seed, spawn_key=(1,) + tuple(int(k) for k in keys))))

    def start_rng(self) -> np.random.Generator:
        """The generator of the start position (rand_skip)."""
        return np.random.Generator(np.random.PCG64(
            np.random.SeedSequence(self.seed, spawn_key=(2,))))

    def reseed(self, seed):
        """Start over from the first batch with ``seed`` (None: the layer's default)."""
        self._set_seed(seed)
        self._rewind()

    # ---------------------------------------------------------------- interface
    def top_shapes(self):
        raise NotImplementedError

    def next_batch(self):
        raise NotImplementedError

    def constant_tops(self) -> dict:
        """``{top index: array}`` for the tops whose values never change (Caffe's
        DummyData constant fillers): the net writes them once, when it is built, and
        leaves them alone afterwards (``next_batch`` still returns them). Empty here."""
        return {}

    def state(self) -> dict:
        st = {"type": self.type_name, "seed": self.seed,
              "rng": copy.deepcopy(self.rng.bit_generator.state)}
        if self.world.size > 1:
            st["shard"] = {"rank": self.world.rank, "size": self.world.size}
        st.update(self._position())
        return st

    def set_state(self, state: dict):
        if not isinstance(state, dict) or state.get("type") != self.type_name:
            got = state.get("type") if isinstance(state, dict) else type(state).__name__
            raise DataError(f"{self.type_name} source '{self.name}': cannot restore a "
                            f"position saved by a {got!r} source")
        check_shard(state, self.world, f"{self.type_name} source '{self.name}'")
        before = self.state()
        try:
            self._apply_state(state)
        except Exception as e:
            self._apply_state(before)           # all or nothing
            if isinstance(e, DataError):
                raise
            raise DataError(f"{self.type_name} source '{self.name}': the saved position "
                            f"is malformed ({type(e).__name__}: {e})") from e

    def _apply_state(self, state):
        self._set_seed(int(state["seed"]))
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._set_position(state)

    def close(self):
        pass

    def _position(self) -> dict:
        return {}

    def _set_position(self, state):
        pass

    def _rewind(self):
        pass

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}' {self.phase} tops={self.top_shapes()}>"


def message_dict(msg) -> dict:
    """The fields set in a protobuf message, enums by name, sub-messages as dicts."""
    out = {}
    for fd, value in msg.ListFields():
        rep = getattr(fd, "is_repeated", None)
        rep = rep if rep is not None else fd.label == fd.LABEL_REPEATED
        if fd.message_type is not None:
            value = [message_dict(v) for v in value] if rep else message_dict(value)
        elif fd.enum_type is not None:
            name = fd.enum_type.values_by_number
            value = [name[v].name for v in value] if rep else name[value].name
        elif rep:
            value = list(value)
        out[fd.name] = value
    return out


def has_any_field(msg) -> bool:
    return bool(msg.ListFields())
