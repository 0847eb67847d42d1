"""The solver's nets: the train net and the test nets of a SolverParameter, weights
copied in and shared with the test nets, and what a net's outputs say."""
from __future__ import annotations

import os

import numpy as np

from ..formats import prototxt
from ..formats.proto import caffe_pb2
from ..net import TEST, TRAIN, Net
from .common import SolverError
from .rules import RULES


class NetsMixin:
    """Solver methods building and sharing the nets."""

    def _check_param(self):
        p = self.param
        if p.average_loss < 1:
            raise SolverError(f"average_loss must be at least 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"iter_size must be at least 1, got {p.iter_size}")
        if p.regularization_type not in ("L1", "L2"):
            raise SolverError(f'unknown regularization_type "{p.regularization_type}"; '
                              'expected "L1" or "L2"')
        if p.snapshot_format != p.BINARYPROTO and p.snapshot > 0:
            raise SolverError("snapshot_format HDF5 is not supported; use BINARYPROTO")
        self._check_type_param()

    def _check_type_param(self):
        check = RULES[self.type].check if self.type in RULES else None
        if check:
            check(self.param)

    def _where(self):
        return f"solver {self.filename or '<message>'}"

    def _net_file(self, path, field):
        if os.path.exists(path):
            return path
        if self.filename and not os.path.isabs(path):
            alt = os.path.join(os.path.dirname(self.filename), path)
            if os.path.exists(alt):
                return alt
        raise SolverError(f"{self._where()}: {field} '{path}' not found (relative paths are "
                          "taken from the current directory, as in Caffe, then from the "
                          "solver file's folder)")

    def _make_net(self, model, phase_state, solver_state):
        state = caffe_pb2.NetState()
        state.phase = phase_state
        if isinstance(model, str):
            file_state = prototxt.parse_net(model).state
        else:
            file_state = model.state
        state.MergeFrom(file_state)
        if solver_state is not None:
            state.MergeFrom(solver_state)
        if not isinstance(model, str):
            msg = caffe_pb2.NetParameter()
            msg.CopyFrom(model)
            msg.state.CopyFrom(state)
            model = msg
        return Net(model, phase=state.phase, stages=list(state.stage), level=state.level,
                   backend=self.backend, layer_modules=self.layer_modules,
                   input_shapes=self.input_shapes)

    def _init_train_net(self):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param")
                 if p.HasField(f)]
        if len(given) != 1:
            raise SolverError(f"{self._where()}: give exactly one train net with net, "
                              f"net_param, train_net or train_net_param; found "
                              f"{', '.join(given) or 'none'}")
        field = given[0]
        model = getattr(p, field)
        if field in ("net", "train_net"):
            model = self._net_file(model, field)
        return self._make_net(model, TRAIN, p.train_state if p.HasField("train_state")
                              else None)

    def _init_test_nets(self):
        p = self.param
        generic = [f for f in ("net", "net_param") if p.HasField(f)]
        if len(generic) > 1:
            raise SolverError(f"{self._where()}: both net and net_param are given")
        n_specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < n_specific:
            raise SolverError(f"{self._where()}: test_iter must be given for each test net "
                              f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
        if not generic and len(p.test_iter) != n_specific:
            raise SolverError(f"{self._where()}: test_iter must be given for each test net "
                              f"({n_specific} test nets, {len(p.test_iter)} test_iter)")
        models = list(p.test_net_param)
        models += [self._net_file(f, "test_net") for f in p.test_net]
        remaining = len(p.test_iter) - len(models)
        if generic:
            m = getattr(p, generic[0])
            if generic[0] == "net":
                m = self._net_file(m, "net")
            models += [m] * remaining
        if len(p.test_state) and len(p.test_state) != len(models):
            raise SolverError(f"{self._where()}: test_state must be unset or given once per "
                              f"test net ({len(models)} test nets)")
        if models and p.test_interval <= 0:
            raise SolverError(f"{self._where()}: test nets need test_interval > 0")
        return [self._make_net(m, TEST, p.test_state[i] if len(p.test_state) else None)
                for i, m in enumerate(models)]


    def share_weights(self, net):
        """Make ``net``'s params use the train net's param memories, layer by layer, by
        name (Caffe's ShareTrainedLayersWith): the same values on the host and the
        device, so a test net measures the current weights without copies."""
        try:
            net.share_with(self.net)
        except ValueError as e:
            raise SolverError(f"{self._where()}: test net: {e}") from None


    def copy_weights(self, paths):
        """Copy .caffemodel weights (a path, or comma-separated paths) into the train
        and test nets, as caffe train --weights."""
        for path in str(paths).split(","):
            path = path.strip()
            if not path:
                continue
            self.net.copy_from(path)
            for n in self.test_nets:
                n.copy_from(path)

    def close(self):
        for n in [self.net] + list(self.test_nets):
            n.close()



def _loss_note(o):
    w = o.get("loss_weight", 0.0)
    return f" (* {w:g} = {w * o['value']:.6g} loss)" if w else ""


def net_loss(net) -> float:
    """Caffe's Forward loss: sum of loss_weight times the sum of each loss top."""
    loss = 0.0
    for layer in net._layers:
        for name, w in zip(layer.tops, layer.loss_weights):
            if w:
                loss += float(w) * float(net.blobs[name].read_data().sum(dtype=np.float64))
    return loss


def output_scores(net):
    """One record per element of each output blob: name, value, loss_weight."""
    weights = {}
    for layer in net._layers:
        for name, w in zip(layer.tops, layer.loss_weights):
            if w:
                weights[name] = float(w)
    out = []
    for name in net.outputs:
        for v in np.asarray(net.blobs[name].read_data(), dtype=np.float64).reshape(-1):
            out.append({"name": name, "value": float(v), "loss_weight": weights.get(name, 0.0)})
    return out

