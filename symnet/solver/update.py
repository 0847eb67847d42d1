"""The parameter update: learnable params laid out in flat buffers by (lr_mult,
decay_mult), and one compiled graph doing Caffe's ApplyUpdate over all of them
(clipping, normalisation, weight decay, then the solver type's rule from
:mod:`.rules`)."""
from __future__ import annotations

import logging
import math

import numpy as np

from .. import functions as F
from ..function import Function
from ..graph import Graph, graph_scope
from ..runtime.blob import flatten_blobs, is_view_of
from ..runtime.memory import SyncedMemory
from .common import _f32, log
from .lr_policy import learning_rate
from .rules import RULES


class UpdateMixin:
    """Solver methods for the flat layout and the update."""

    def learnable_params(self):
        """[(blob, lr_mult, decay_mult)] in Caffe's learnable_params order: each blob
        once (the first layer naming a shared param owns it)."""
        out, seen = [], set()
        for layer in self.net._layers:
            for k, blob in enumerate(layer.blobs):
                if id(blob) in seen:
                    continue
                seen.add(id(blob))
                lr = layer.lr_mult[k] if k < len(layer.lr_mult) else 1.0
                dm = layer.decay_mult[k] if k < len(layer.decay_mult) else 1.0
                out.append((blob, float(lr), float(dm)))
        return out

    def _build_layout(self, old_histories=None):
        """Group learnable params by (lr_mult, decay_mult); each group's data, diff and
        histories live in flat arrays, the blobs' arrays are views into them."""
        params = self.learnable_params()
        classes = {}
        for i, (blob, lr, dm) in enumerate(params):
            classes.setdefault((_f32(lr), _f32(dm)), []).append(i)
        groups = []
        for (lr, dm), idx in classes.items():
            blobs = [params[i][0] for i in idx]
            data, diff, offsets = flatten_blobs(blobs)
            hist = [SyncedMemory(data.shape) for _ in range(self.n_histories)]
            groups.append({"lr_mult": lr, "decay_mult": dm, "index": idx, "blobs": blobs,
                           "offsets": offsets, "data": data, "diff": diff, "hist": hist})
        views = [[None] * len(params) for _ in range(self.n_histories)]
        for g in groups:
            for i, b, off in zip(g["index"], g["blobs"], g["offsets"]):
                for j in range(self.n_histories):
                    views[j][i] = g["hist"][j].view(off, b.shape)
        if old_histories is not None:
            for j, arrays in enumerate(old_histories[:self.n_histories]):
                for i, a in enumerate(arrays[:len(params)]):
                    if a is not None and a.shape == views[j][i].shape:
                        views[j][i].host_write()[...] = a
        self._params = params
        self._layout = groups
        self._history_views = views
        self._layout_key = [id(b) for b, _, _ in params]
        self._update_fn = None
        for net in getattr(self, "test_nets", []):
            self.share_weights(net)

    def _sync_layout(self):
        """Rebuild the flat layout when the net's params changed (net.reshape) or a
        blob's arrays no longer lie in the flat buffers."""
        if [id(b) for b, _, _ in self.learnable_params()] != self._layout_key:
            self._build_layout(self._history_copies())
            return
        for g in self._layout:
            for b, off in zip(g["blobs"], g["offsets"]):
                if not (is_view_of(b, g["data"], off, "data")
                        and is_view_of(b, g["diff"], off, "diff")):
                    self._build_layout(self._history_copies())
                    return

    def _history_copies(self):
        return [[np.array(v.host_read()) for v in hs] for hs in self._history_views]

    @property
    def history(self):
        """The history blobs' arrays in Caffe's order (one list per history set); the host
        becomes their head, as pycaffe's ``blob.data``."""
        return [v.host_write() for hs in self._history_views for v in hs]

    # ------------------------------------------------------------------ update graph
    def _rule(self, p, g, hs, lr, lm, scalars):
        """(new param, new histories) of one param class: Tensors. ``lr`` is the rate
        (a scalar input), ``lm`` the class's lr_mult (a number): Caffe's local_rate is
        ``lr * lm``. The rule of the solver's type, from the table ``RULES``."""
        return RULES[self.type].rule(self.param, p, g, hs, lr, lm, scalars)

    def _lr_scalars(self, rate):
        """The scalar inputs of the update besides the rate (Adam's correction)."""
        scalars = RULES[self.type].scalars
        return scalars(self.param, self.iter) if scalars else []

    def _build_update(self):
        prm = self.param
        graph = Graph()
        with graph_scope(graph):
            lr = F.input("lr", ())
            extra = [F.input(f"s{k}", ()) for k in range(len(self._lr_scalars(1.0)))]
            ins, outs = [lr] + extra, []
            groups = []
            for k, gr in enumerate(self._layout):
                n = gr["data"].size
                P = F.input(f"param{k}", (n,))
                G = F.input(f"diff{k}", (n,))
                H = [F.input(f"history{j}_{k}", (n,)) for j in range(self.n_histories)]
                ins += [P, G] + H
                groups.append((gr, P, G, H))
            scale = None
            clip = prm.clip_gradients
            if clip >= 0 and groups:
                sumsq = None
                for _, _, G, _ in groups:
                    s = F.sum(F.elementwise(lambda x: x * x, G, label="sq"))
                    sumsq = s if sumsq is None else F.add(sumsq, s)
                c = _f32(clip)
                scale = F.elementwise(
                    lambda s: _piecewise_clip(s, c), sumsq, label="clip_scale")
            norm = _f32(1.0 / prm.iter_size) if prm.iter_size != 1 else None
            wd = _f32(prm.weight_decay)
            for gr, P, G, H in groups:
                g = G
                if scale is not None:
                    g = F.elementwise(lambda x, s: x * s, g, scale, label="clip")
                if norm is not None:
                    g = F.elementwise(lambda x: x * norm, g, label="normalize")
                local_decay = _f32(np.float32(wd) * np.float32(gr["decay_mult"]))
                if local_decay:
                    if prm.regularization_type == "L2":
                        g = F.elementwise(lambda x, w: x + local_decay * w, g, P,
                                          label="l2_decay")
                    else:
                        import sympy as sp
                        g = F.elementwise(lambda x, w: x + local_decay * sp.sign(w), g, P,
                                          label="l1_decay")
                p_new, h_new = self._rule(P, g, H, lr, gr["lr_mult"], extra)
                outs += [p_new] + list(h_new)
            if not outs:
                self._update_fn = None
                return
            if scale is not None:       # the squared norm, read back only to log it
                outs.append(sumsq)
            name = f"{self.type.lower()}_update"
            self._update_fn = Function(ins, outs, backend=self.net.backend, name=name)

    def update_function(self):
        """The compiled update Function (built on first use)."""
        if self._update_fn is None:
            self._build_update()
        return self._update_fn

    def apply_update(self):
        """Caffe's ApplyUpdate: the rate for the current iteration, then the fused
        update of every learnable param."""
        self._sync_layout()
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        self.lr = rate
        if self.param.display and self.iter % self.param.display == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        fn = self.update_function()
        if fn is None:
            return
        arrays = [np.float32(rate)] + [np.float32(s) for s in self._lr_scalars(rate)]
        out = []
        for gr in self._layout:
            arrays += [gr["data"], gr["diff"]] + gr["hist"]
            out += [gr["data"]] + gr["hist"]
        clipping = len(fn.outputs) > len(out)
        if clipping:                    # the gradients' squared norm, computed on the device
            out.append(np.empty((), np.float32))
        fn(*arrays, out=out)
        if clipping:
            self._log_clip(float(out[-1]))

    def _log_clip(self, sumsq):
        """Caffe's ClipGradients message, from the squared L2 norm of all diffs that the
        update computed (only that scalar leaves the device)."""
        if not log.isEnabledFor(logging.INFO):
            return
        norm = math.sqrt(sumsq)
        clip = self.param.clip_gradients
        if norm > clip:
            log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale "
                     "factor %g", norm, clip, clip / norm)



def _piecewise_clip(s, c):
    import sympy as sp
    norm = sp.sqrt(s)
    return sp.Piecewise((c / norm, norm > c), (sp.Integer(1), True))
