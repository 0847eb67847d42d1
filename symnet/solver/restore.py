"""Restoring a solver state: read and check everything first, then change the solver."""
from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np

from ..errors import SymnetError
from ..formats import prototxt
from ..formats.proto import caffe_pb2
from ..formats import weights as weights_io
from .common import SolverError, log
from .resume_data import (ResumeWarning, _can_seek, _check_form, _has_known_form,
                          _is_int, _kind)
from .snapshot import EXTRA_FIELD, EXTRA_FORMAT, _top_level_field


class RestoreMixin:
    """Solver methods restoring a solver state."""

    def restore(self, state_file):
        """Continue from a solver state: a .solverstate (Caffe's or symnet's) or Caffe's
        HDF5 form (a name ending in .h5): iteration, lr policy step, histories, the
        weights of ``learned_net`` and symnet's resume data (the positions of the data
        layers, the net's iteration counter).

        The whole state is checked before anything changes: a malformed one is a
        SolverError naming the file, the field or blob and what was found and expected,
        and the solver, the nets' weights, the histories and the data positions are as
        they were. Where the resume cannot be exact (a state without symnet's resume
        data, e.g. Caffe's; a data source that cannot seek) a :class:`ResumeWarning`
        says what will differ.

        With several ranks every rank reads the state (a file system all ranks see, as
        for Caffe) and takes its own data positions; the ranks agree that all
        succeeded, then every rank takes rank 0's weights; only rank 0 warns."""
        state_file = os.fspath(state_file)
        sync = getattr(self, "_sync", None)
        if sync is None:
            plan = self._read_state(state_file)
            self._apply_state(plan)
        else:
            try:
                plan = self._read_state(state_file)
                self._apply_state(plan)
            except Exception as e:
                sync.agree(e)           # raises on every rank
            sync.agree()
            sync.broadcast_params()
            if sync.rank != 0:
                return
        for message in plan["warnings"]:
            warnings.warn(message, ResumeWarning, stacklevel=2)

    # -- reading and checking (nothing changes)
    def _read_state(self, state_file):
        data = b""
        if not state_file.endswith(".h5"):      # Caffe's test for the HDF5 form
            data = prototxt.read_limited(state_file, what="solver state (.solverstate)",
                                         limit=prototxt.MAX_BINARY_BYTES,
                                         error=SolverError)
        self._sync_layout()
        if state_file.endswith(".h5") or data.startswith(weights_io.HDF5_SIGNATURE):
            plan = self._read_state_hdf5(state_file)
        else:
            plan = self._read_state_proto(state_file, data)
        plan["warnings"] = []
        learned = plan["learned_net"]
        if learned:
            path = self._learned_net_path(learned, state_file)
            try:
                plan["weights"] = weights_io.check_trained_layers(self.net, path)
            except SymnetError as e:
                raise SolverError(f"{state_file}: learned_net '{learned}': {e}") from None
        else:
            plan["weights"] = []
            plan["warnings"].append(f"{state_file} names no learned_net: the net keeps its "
                                    "current weights")
        self._check_resume_data(state_file, plan)
        return plan

    def _history_shapes(self):
        """The shape each history blob must have, in Caffe's order: every learnable
        param's, once per history set (SGD, Nesterov, AdaGrad, RMSProp: one set; AdaDelta
        and Adam: two, the second after all params of the first)."""
        shapes = [tuple(v.shape) for v in self._history_views[0]]
        return shapes * self.n_histories

    def _history_count_error(self, state_file, found):
        n_params = len(self._history_views[0])
        per = "one history blob" if self.n_histories == 1 else \
            f"{self.n_histories} history blobs"
        return SolverError(f"{state_file}: holds {found} history blobs, the {self.type} "
                           f"solver of this net needs {n_params * self.n_histories} ({per} "
                           f"per learnable param, {n_params} params; same solver type and "
                           "net?)")

    @staticmethod
    def _check_counters(state_file, it, current_step):
        if it < 0 or current_step < 0:
            raise SolverError(f"{state_file}: iter {it} and current_step {current_step}; "
                              "both must be >= 0")

    def _read_state_proto(self, state_file, data):
        state = caffe_pb2.SolverState()
        try:
            state.ParseFromString(data)
        except Exception as e:
            raise SolverError(f"{state_file}: not a valid SolverState ({e})") from None
        self._check_counters(state_file, state.iter, state.current_step)
        shapes = self._history_shapes()
        if len(state.history) != len(shapes):
            raise self._history_count_error(state_file, len(state.history))
        history = []
        for i, (bp, shape) in enumerate(zip(state.history, shapes)):
            found, legacy = weights_io.proto_shape(bp)
            if not weights_io.shape_fits(shape, found, legacy):     # before converting
                raise SolverError(f"{state_file}: history blob {i} has shape {list(found)}, "
                                  f"its param has {list(shape)}")
            try:
                history.append(prototxt.blob_to_array(bp).reshape(shape))
            except SymnetError as e:
                raise SolverError(f"{state_file}: history blob {i}: {e}") from None
        try:
            extra = _top_level_field(data, EXTRA_FIELD)
        except SolverError as e:
            raise SolverError(f"{state_file}: {e}") from None
        learned = state.learned_net if state.HasField("learned_net") else ""
        if isinstance(learned, bytes):      # not UTF-8: protobuf hands the raw bytes over
            learned = os.fsdecode(learned)
        return {"iter": int(state.iter), "current_step": int(state.current_step),
                "learned_net": learned, "history": history, "extra": extra}

    def _read_state_hdf5(self, state_file):
        """Caffe's SnapshotSolverStateToHDF5 layout: datasets ``iter``, ``current_step``
        and ``learned_net``, group ``history`` of datasets "0", "1", ..."""
        try:
            import h5py
        except ImportError:
            raise SolverError(f"{state_file}: reading an HDF5 solver state needs h5py: "
                              "pip install 'symnet[data]'") from None
        try:
            weights_io.check_hdf5(state_file)     # the superblock, before the library
            f = h5py.File(state_file, "r")
        except Exception as e:
            raise SolverError(f"{state_file}: not a readable HDF5 solver state "
                              f"({type(e).__name__}: {e})") from None
        try:
            with f:
                it = _h5_int(h5py, f, "iter", state_file)
                current_step = _h5_int(h5py, f, "current_step", state_file)
                self._check_counters(state_file, it, current_step)
                learned = ""
                if "learned_net" in f:
                    learned = _h5_str(h5py, f["learned_net"], state_file)
                group = f.get("history")
                if not isinstance(group, h5py.Group):
                    raise SolverError(f"{state_file}: no group 'history' (not a solver "
                                      "state in Caffe's HDF5 form)")
                shapes = self._history_shapes()
                names = list(group.keys())
                if len(names) != len(shapes):
                    raise self._history_count_error(state_file, len(names))
                expected = [str(i) for i in range(len(shapes))]
                if sorted(names) != sorted(expected):
                    raise SolverError(f"{state_file}: the history group holds "
                                      f"{sorted(names)}, expected {expected}")
                history = []
                for i, shape in enumerate(shapes):
                    try:
                        history.append(weights_io.hdf5_array(
                            h5py, group[str(i)], shape, f"{state_file}: history blob {i}"))
                    except weights_io.WeightsError as e:
                        raise SolverError(str(e)) from None
        except SymnetError:
            raise
        except Exception as e:       # a damaged file: h5py's OSError, KeyError, ...
            raise SolverError(f"{state_file}: cannot read the HDF5 solver state "
                              f"({type(e).__name__}: {e})") from None
        return {"iter": it, "current_step": current_step, "learned_net": learned,
                "history": history, "extra": None}

    def _check_resume_data(self, state_file, plan):
        """Check symnet's resume data against the nets; plan["data"] becomes the data
        positions to set [(where, feeder, position)], plan["net_iteration"] the train
        net's counter."""
        extra, notes = plan["extra"], plan["warnings"]
        where = f"{state_file}: symnet resume data"
        nets = [("the train net", self.net)] + \
            [(f"test net #{k}", n) for k, n in enumerate(self.test_nets)]
        plan["data"] = []
        if extra is None:
            plan["net_iteration"] = plan["iter"] * self.param.iter_size
            layers = [f"'{layer.name}' ({label})" for label, net in nets
                      for layer, _ in getattr(net, "_feeders", [])]
            if layers:
                notes.append(f"{state_file} holds no symnet resume data (a Caffe snapshot?):"
                             f" the data layers {', '.join(layers)} start from their current "
                             "position, not where the snapshot left them")
            return
        try:
            info = json.loads(extra.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise SolverError(f"{where} (field {EXTRA_FIELD}) is not JSON: {e}") from None
        if not isinstance(info, dict):
            raise SolverError(f"{where} is {_kind(info)}, expected an object")
        if info.get("format") != EXTRA_FORMAT:
            raise SolverError(f"{where}: format {info.get('format')!r}, expected "
                              f"{EXTRA_FORMAT!r}")
        if "type" in info and info["type"] != self.type:
            notes.append(f"{state_file} was written by a {info['type']!r} solver, this is "
                         f"a {self.type!r} solver: its histories are taken as they are")
        it = info.get("net_iteration", plan["iter"] * self.param.iter_size)
        if not _is_int(it) or it < 0:
            raise SolverError(f"{where}: net_iteration is {it!r}, expected an integer "
                              ">= 0")
        plan["net_iteration"] = int(it)
        data = self._rank_positions(info, state_file, notes)
        if not isinstance(data, dict):
            raise SolverError(f"{where}: 'data' is {_kind(data)}, expected an object")
        train = data.get("train", {})
        test = data.get("test", [])
        if not isinstance(train, dict):
            raise SolverError(f"{where}: 'data.train' is {_kind(train)}, expected an "
                              "object")
        if not isinstance(test, list) or not all(isinstance(t, dict) for t in test):
            raise SolverError(f"{where}: 'data.test' must be a list of objects, one per "
                              "test net")
        if len(test) != len(self.test_nets):
            notes.append(f"{state_file} holds data positions for {len(test)} test nets, "
                         f"the solver has {len(self.test_nets)}: test nets without one "
                         "start from their current position")
        saved_all = [train] + test + [{}] * max(0, len(self.test_nets) - len(test))
        for (label, net), saved in zip(nets, saved_all):
            names = set()
            for layer, feeder in getattr(net, "_feeders", []):
                names.add(layer.name)
                pos = saved.get(layer.name)
                here = f"data layer '{layer.name}' ({layer.type}) of {label}"
                if not _can_seek(layer, feeder):
                    notes.append(f"{state_file}: the source of {here} cannot seek: it "
                                 "continues from its current position, not where the "
                                 "snapshot left it")
                    continue
                if pos is None:
                    notes.append(f"{state_file} holds no position for {here}: it starts "
                                 "from its current position")
                    continue
                current = feeder.state()
                if _has_known_form(layer):
                    _check_form(pos, current, f"{where}: the position of {here}", "")
                plan["data"].append((here, feeder, pos))
            extra_names = sorted(set(saved) - names)
            if extra_names:
                notes.append(f"{state_file} holds positions of data layers {label} does "
                             f"not have: {', '.join(extra_names)} (ignored)")

    def _rank_positions(self, info, state_file, notes):
        """The data positions this rank takes: its own entry of ``ranks`` when the state
        was written by as many ranks. A train source's position is a shard of its record
        stream (rank r of N reads records r, r + N, ...), so with another number of ranks
        the train nets' positions are not taken (their sources start where they are, as
        Caffe's always do); the test nets' (unsharded, rank 0's) still are."""
        data = info.get("data", {})
        sync = getattr(self, "_sync", None)
        ranks = info.get("ranks")
        size, rank = (1, 0) if sync is None else (sync.size, sync.rank)
        if ranks is not None and (not isinstance(ranks, list)
                                  or not all(isinstance(r, dict) for r in ranks)):
            raise SolverError(f"{state_file}: symnet resume data: 'ranks' must be a list "
                              "of objects, one per rank")
        written = 1 if ranks is None else len(ranks)
        if written == size:
            return data if ranks is None else ranks[rank]
        notes.append(f"{state_file} was written by {written} "
                     f"{'process' if written == 1 else 'ranks'}, this run has {size}: the "
                     "train data sources start from their current position (an exact "
                     "resume needs the same number of ranks)")
        if not isinstance(data, dict):
            return data
        return {"train": {}, "test": data.get("test", [])}

    # -- changing (all checked)
    def _apply_state(self, plan):
        done = []
        try:
            for here, feeder, pos in plan["data"]:
                done.append((feeder, feeder.state()))
                feeder.set_state(copy.deepcopy(pos))
        except Exception as e:
            for feeder, previous in reversed(done):     # put the positions back
                try:
                    feeder.set_state(previous)
                except Exception:
                    log.error("could not put the position of a data layer back after a "
                              "failed restore", exc_info=True)
            raise SolverError(f"cannot restore the position of {here}: "
                              f"{type(e).__name__}: {e}") from e
        weights_io.write_trained_layers(plan["weights"])
        for a, dst in zip(plan["history"], self.history):
            dst[...] = a
        self.iter = plan["iter"]
        self.current_step = plan["current_step"]
        self.net.iteration = plan["net_iteration"]

    @staticmethod
    def _learned_net_path(path, state_file):
        if os.path.isfile(path):
            return path
        alt = os.path.join(os.path.dirname(os.path.abspath(state_file)),
                           os.path.basename(path))
        if os.path.isfile(alt):
            return alt
        raise SolverError(f"{state_file}: its learned_net '{path}' was not found (nor "
                          f"'{alt}')")


def _h5_int(h5py, f, name, state_file):
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        raise SolverError(f"{state_file}: no dataset '{name}'")
    if node.dtype.kind not in "iu" or node.size != 1 or len(node.shape or ()) > 1:
        raise SolverError(f"{state_file}: '{name}' holds {node.dtype} of shape "
                          f"{list(node.shape or ())}, expected one integer")
    value = int(np.asarray(node[()]).reshape(-1)[0])
    if not -2 ** 31 <= value < 2 ** 31:
        raise SolverError(f"{state_file}: '{name}' is {value}, beyond a 32-bit integer")
    return value


def _h5_str(h5py, node, state_file):
    if not isinstance(node, h5py.Dataset) or node.size != 1:
        raise SolverError(f"{state_file}: 'learned_net' is not a string dataset")
    value = np.asarray(node[()]).reshape(-1)[0] if node.shape else node[()]
    if isinstance(value, bytes):
        return os.fsdecode(value)           # a path, as the file system spells it
    if isinstance(value, str):
        return value
    raise SolverError(f"{state_file}: 'learned_net' holds {node.dtype}, expected a "
                      "string")

