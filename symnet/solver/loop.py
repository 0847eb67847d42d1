"""The Solver class and its step loop (Caffe's Solver::Step and Solve), with testing."""
from __future__ import annotations

import os
import time

from .. import fillers
from ..parallel import ParallelError
from .common import SolverAction, SolverError, _snapshot_prefix, log, read_solver_param
from .nets import NetsMixin, _loss_note, net_loss, output_scores
from .parallel import make_sync
from .restore import RestoreMixin
from .snapshot import SnapshotMixin
from .update import UpdateMixin


class Solver(NetsMixin, UpdateMixin, SnapshotMixin, RestoreMixin):
    """Caffe's Solver + SGDSolver. Build one with ``get_solver`` (the file's type) or a
    subclass (``SGDSolver(path)`` as in pycaffe).

    Keyword arguments: ``backend`` (the nets' backend), ``layer_modules``,
    ``input_shapes`` (stand in data layers, for every net), ``feed`` (a callable
    ``feed(solver, net, sub_iteration) -> {blob: array}`` giving input blobs before each
    training forward pass, e.g. for nets with Input layers), ``test_feed`` (the same
    for test nets: ``test_feed(solver, test_net, test_iteration)``), ``weights`` (a
    .caffemodel, or comma-separated paths, copied into the train and test nets).

    Under ``mpiexec`` / ``srun`` (several MPI ranks, see :mod:`symnet.parallel`) the
    solver trains data-parallel (:mod:`.parallel`): only rank 0 builds test nets,
    tests, logs and writes snapshots; ``solver.world`` says which rank this is."""

    type = "SGD"
    n_histories = 1

    def __init__(self, solver, *, backend=None, layer_modules=(), input_shapes=None,
                 feed=None, test_feed=None, weights=None):
        self.filename = None
        if isinstance(solver, (str, os.PathLike)) and os.path.exists(solver):
            self.filename = os.fspath(solver)
        self.param = read_solver_param(solver if self.filename is None else self.filename)
        p = self.param
        self._check_param()
        self.backend = backend
        self.layer_modules = tuple(layer_modules)
        self.input_shapes = input_shapes
        self.feed, self.test_feed = feed, test_feed
        self.snapshot_prefix = _snapshot_prefix(p, self.filename)
        if p.random_seed >= 0:     # Caffe's Solver::Init, before the nets are built
            fillers.set_random_seed(int(p.random_seed))   # fillers, functions, data
        self.iter = 0
        self.current_step = 0
        self.lr = 0.0
        self.smoothed_loss = 0.0
        self._losses = []
        self.requested_early_exit = False
        self.action_function = None
        self.listeners = []
        self._callbacks = []
        self._layout = None
        self._update_fn = None
        self._sync = make_sync(self)    # None in one process
        try:
            self.net = self._init_train_net()
            # as Caffe's Solver::Init, only the root solver has test nets
            self.test_nets = self._init_test_nets() if self.is_root else []
            self.mean_scores = [[] for _ in self.test_nets]
            for w in ([weights] if weights else []) + list(p.weights):
                self.copy_weights(w)
            self._build_layout()        # which also shares the weights with the test nets
        except Exception as e:
            if self._sync is None:
                raise
            self._sync.agree(e)         # raises on every rank
        if self._sync is not None:
            self._sync.agree()
            self._sync.broadcast_params()   # every rank starts from rank 0's weights

    @property
    def is_root(self):
        """Whether this solver tests, logs and writes snapshots (rank 0, or the only
        process)."""
        return self._sync is None or self._sync.rank == 0

    @property
    def world(self):
        """The MPI world the solver trains in (rank 0 of 1 without MPI)."""
        from ..parallel import World
        return World() if self._sync is None else self._sync.world


    # ------------------------------------------------------------------ training
    def add_callback(self, on_start=None, on_gradients_ready=None):
        """pycaffe's ``solver.add_callback(on_start, on_gradients_ready)``."""
        self._callbacks.append((on_start, on_gradients_ready))

    def _emit(self, event):
        for fn in list(self.listeners):
            fn(event)

    def _request(self):
        """The signal action asked for; with several ranks, none here: the ranks agree on
        actions once per iteration (``_local_request`` in ``step``)."""
        if self._sync is not None:
            return SolverAction.NONE
        return self._local_request()

    def _local_request(self):
        if self.action_function is None:
            return SolverAction.NONE
        return self.action_function() or SolverAction.NONE

    def clear_param_diffs(self):
        self._sync_layout()
        for g in self._layout:         # every param blob's diff is a view of these
            g["diff"].fill_zero()

    def forward_backward(self, sub=0):
        """One forward and backward pass of the train net; the loss."""
        feed = self.feed(self, self.net, sub) if self.feed else {}
        self.net.forward_backward(**(feed or {}))
        return net_loss(self.net)

    def _update_smoothed_loss(self, loss, start_iter):
        avg = self.param.average_loss
        if len(self._losses) < avg:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss += (loss - self._losses[idx]) / avg
            self._losses[idx] = loss

    def step(self, iters):
        """Caffe's Solver::Step: ``iters`` iterations (tests, display, snapshots). With
        several ranks, once per iteration the ranks agree on errors and signal actions,
        then sum their gradients (see :mod:`.parallel`)."""
        sync = self._sync
        try:
            self._step(int(iters), sync)
        except ParallelError:
            raise                       # every rank raises it together
        except BaseException as e:
            if sync is not None:        # the ranks cannot meet again
                sync.abort(e)
            raise

    def _step(self, iters, sync):
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self._losses = []
        self.smoothed_loss = 0.0
        timer, last = time.perf_counter(), self.iter
        pending = None                  # an error to tell the other ranks
        while self.iter < stop_iter:
            try:
                self.clear_param_diffs()
                if p.test_interval and self.iter % p.test_interval == 0 and \
                        (self.iter > 0 or p.test_initialization):
                    self.test_all()
                    if self.requested_early_exit:
                        break
                for on_start, _ in self._callbacks:
                    if on_start:
                        on_start()
                display = bool(p.display) and self.iter % p.display == 0 and self.is_root
                loss = 0.0
                for i in range(p.iter_size):
                    loss += self.forward_backward(i)
                loss /= p.iter_size
                self._update_smoothed_loss(loss, start_iter)
                if display:
                    lapse = time.perf_counter() - timer
                    per_s = (self.iter - last) / lapse if lapse > 0 else 0.0
                    outputs = output_scores(self.net)
                    log.info("Iteration %d (%.4g iter/s, %.4gs/%d iters), loss = %.6g",
                             self.iter, per_s, lapse, p.display, self.smoothed_loss)
                    for k, o in enumerate(outputs):
                        log.info("    Train net output #%d: %s = %.6g%s", k, o["name"],
                                 o["value"], _loss_note(o))
                    self._emit({"event": "train", "iter": self.iter,
                                "loss": self.smoothed_loss, "outputs": outputs,
                                "iters_per_s": per_s, "time": time.time()})
                    timer, last = time.perf_counter(), self.iter
                for _, on_grad in self._callbacks:
                    if on_grad:
                        on_grad()
            except Exception as e:
                if sync is None:
                    raise
                pending = pending or e
            request = None
            if sync is not None:
                request = sync.agree(pending, self._local_request())
                sync.allreduce_gradients()
            self.apply_update()
            if display:
                self._emit({"event": "lr", "iter": self.iter, "lr": self.lr})
            self.iter += 1
            self._emit({"event": "iteration", "iter": self.iter, "loss": loss,
                        "lr": self.lr})
            if request is None:
                request = self._request()
            if (p.snapshot and self.iter % p.snapshot == 0) or \
                    request == SolverAction.SNAPSHOT:
                pending = self._snapshot_or_error(sync)
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break
        if sync is not None:
            sync.agree(pending)

    def _snapshot_or_error(self, sync):
        """Snapshot; with several ranks an error is returned, for the ranks to agree on."""
        try:
            self.snapshot()
        except Exception as e:
            if sync is None:
                raise
            return e
        return None

    def solve(self, resume_file=None):
        """Caffe's Solver::Solve: (restore,) train to max_iter, snapshot, final test."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            error = self._snapshot_or_error(self._sync)
            if self._sync is not None:
                self._sync.agree(error)
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            self._emit({"event": "stopped", "iter": self.iter})
            return
        if p.display and self.iter % p.display == 0 and self.is_root:
            feed = self.feed(self, self.net, 0) if self.feed else {}
            self.net.forward(**(feed or {}))
            self._update_smoothed_loss(net_loss(self.net), start_iter)
            log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
            self._emit({"event": "train", "iter": self.iter, "loss": self.smoothed_loss,
                        "outputs": output_scores(self.net), "time": time.time()})
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")
        self._emit({"event": "done", "iter": self.iter})


    # ------------------------------------------------------------------ testing
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Caffe's Solver::Test: test_iter forward passes, mean of each output."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        self.share_weights(net)
        scores, names, loss = None, None, 0.0
        n = p.test_iter[test_net_id]
        for i in range(n):
            request = self._request()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._request()
            if self.requested_early_exit:
                break
            feed = self.test_feed(self, net, i) if self.test_feed else {}
            net.forward(**(feed or {}))
            if p.test_compute_loss:
                loss += net_loss(net)
            vals = output_scores(net)
            if scores is None:
                scores = [o["value"] for o in vals]
                names = vals
            else:
                for k, o in enumerate(vals):
                    scores[k] += o["value"]
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return
        event = {"event": "test", "iter": self.iter, "net": test_net_id, "outputs": []}
        if p.test_compute_loss:
            loss /= n
            log.info("Test loss: %.6g", loss)
            event["loss"] = loss
        means = []
        for k, o in enumerate(names or []):
            mean = scores[k] / n
            means.append(mean)
            rec = dict(o, value=mean)
            event["outputs"].append(rec)
            log.info("    Test net output #%d: %s = %.6g%s", k, o["name"], mean,
                     _loss_note(rec))
        self.mean_scores[test_net_id] = means
        self._emit(event)
        return event

