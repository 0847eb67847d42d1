"""Snapshots: the .caffemodel and the .solverstate (with symnet's resume data in field
1000), written to temporary files and renamed; leftovers of killed snapshots swept."""
from __future__ import annotations

import json
import os
import re
import stat
import time

import numpy as np

from ..formats import prototxt
from ..formats.proto import caffe_pb2
from ..formats.weights import net_to_proto
from .common import SolverError, log
from .resume_data import _data_states

EXTRA_FIELD = 1000          # SolverState field holding symnet's JSON resume data
EXTRA_FORMAT = "symnet-solverstate/1"


def _varint(data, pos):
    result = shift = 0
    while True:
        if pos >= len(data):
            raise SolverError("truncated varint in the solverstate")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _encode_varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _top_level_field(data: bytes, number: int):
    """The last value of length-delimited top-level field ``number`` (or None)."""
    pos, found = 0, None
    while pos < len(data):
        key, pos = _varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            if num == number:
                found = data[pos:pos + n]
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise SolverError(f"unexpected wire type {wire} in the solverstate")
    return found


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


TEMP_SUFFIX = prototxt.TEMP_SUFFIX  # temporary files of snapshots: .<target>.<12 hex>.symnet-tmp
TEMP_MAX_AGE = 3600.0             # seconds after which a leftover temporary file is swept
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX) + "$")
# what earlier versions left (tempfile.mkstemp's 8 characters, ".tmp")
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def sweep_stale_temps(prefix, max_age=TEMP_MAX_AGE, now=None):
    """Remove temporary files that killed snapshots of ``prefix`` left in its folder:
    only regular files of this user named ``.<stem>_iter_N.caffemodel|solverstate
    [.h5].<random>.symnet-tmp`` (or the ``.tmp`` names of earlier versions) and last
    modified more than ``max_age`` seconds ago. Returns the paths removed."""
    directory, stem = os.path.split(os.path.abspath(prefix))
    target_re = re.compile(re.escape(stem) + r"_iter_\d+\.(caffemodel|solverstate)(\.h5)?$")
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name) or _LEGACY_TEMP_RE.match(entry.name)
        if not m or not target_re.match(m.group("target")):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or \
                    now - st.st_mtime <= max_age:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        log.info("Removed %s, left by an interrupted snapshot", entry.path)
        removed.append(entry.path)
    return removed


def write_files_atomically(items):
    """Write [(path, bytes)]: every file to a temporary file beside it (see
    :func:`symnet.formats.prototxt.create_temp`; flushed to disk), then each renamed over its target; on any
    error (or interrupt) the temporary files are removed and targets not yet renamed
    keep their old content."""
    temps = []
    try:
        for path, data in items:
            fd, tmp = prototxt.create_temp(path)
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for (path, _), tmp in zip(items, temps):
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise SolverError(f"cannot write the snapshot: {e.strerror or e}") from e
        raise



class _RankFailure:
    def __init__(self, message):
        self.message = message


class SnapshotMixin:
    """Solver methods writing snapshots."""

    def snapshot_filename(self, extension):
        return f"{self.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self):
        """Write ``<prefix>_iter_N.caffemodel`` and ``.solverstate``; returns (model
        path, state path). Both are written to temporary files in the target folder
        first and renamed into place only when both are complete, so an interrupted
        snapshot leaves earlier files as they were.

        With several ranks every rank calls it (the data positions of all ranks are
        gathered to rank 0, into the resume data); rank 0 writes the files, the other
        ranks return (None, None)."""
        ranks = None
        sync = getattr(self, "_sync", None)
        if sync is not None:
            try:
                mine = self._data_positions()
            except Exception as e:      # noqa: BLE001 - reported by rank 0
                mine = _RankFailure(f"{type(e).__name__}: {e}")
            ranks = sync.gather(mine)
            if sync.rank != 0:
                return None, None
            failed = [f"rank {r}: {m.message}" for r, m in enumerate(ranks)
                      if isinstance(m, _RankFailure)]
            if failed:
                raise SolverError("cannot snapshot: the data positions of "
                                  + "; ".join(failed))
        self._sync_layout()
        model = self.snapshot_filename(".caffemodel")
        state_path = self.snapshot_filename(".solverstate")
        directory = os.path.dirname(os.path.abspath(model))
        if not os.path.isdir(directory):
            raise SolverError(f"cannot snapshot to '{model}': folder '{directory}' does not "
                              "exist; create it or change snapshot_prefix")
        sweep_stale_temps(self.snapshot_prefix)
        log.info("Snapshotting to binary proto file %s", model)
        model_bytes = prototxt._serialize(net_to_proto(self.net), model)
        log.info("Snapshotting solver state to binary proto file %s", state_path)
        write_files_atomically([(model, model_bytes),
                                (state_path, self._state_bytes(model, ranks))])
        self._emit({"event": "snapshot", "iter": self.iter, "model": model,
                    "state": state_path})
        return model, state_path

    def _data_positions(self):
        return {"train": _data_states(self.net),
                "test": [_data_states(n) for n in self.test_nets]}

    def _state_bytes(self, model_filename, ranks=None):
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = model_filename
        state.current_step = self.current_step
        for a in (v.host_read() for hs in self._history_views for v in hs):
            state.history.append(prototxt.array_to_blob(np.ascontiguousarray(a)))
        extra = {"format": EXTRA_FORMAT, "type": self.type,
                 "net_iteration": int(self.net.iteration),
                 "data": self._data_positions()}
        if ranks is not None:           # each rank's positions, in rank order
            extra["world_size"] = len(ranks)
            extra["ranks"] = ranks
        blob = json.dumps(extra, default=_json_default, sort_keys=True).encode("utf-8")
        return state.SerializeToString() + \
            _encode_varint(EXTRA_FIELD << 3 | 2) + _encode_varint(len(blob)) + blob
