"""Finite-difference gradient checking on the float64 reference.

Central differences step ``eps`` each way. Where the one-sided differences disagree
by more than the tolerance and keep disagreeing when the step is halved (curvature
would halve the gap), the point sits on a kink (ReLU at 0, max ties): like Caffe's
GradientChecker, such elements are stepped off (skipped) and counted, not compared.
The test is relative to the tolerance, so kinks with small or large slopes are found
alike. A kink strictly between x and x +- eps (not at x) can go unnoticed; random
points hit one with negligible probability.
"""
from __future__ import annotations

import numpy as np

from . import functions as F
from . import reference
from .autodiff import grad
from .errors import GradientError, GraphError
from .graph import Tensor, graph_scope


class GradcheckResult:
    def __init__(self, checked, skipped, max_abs_err, max_rel_err):
        self.checked, self.skipped = checked, skipped
        self.max_abs_err, self.max_rel_err = max_abs_err, max_rel_err

    def __bool__(self):
        return True

    def __repr__(self):
        return (f"GradcheckResult(checked={self.checked}, skipped_kinks={self.skipped}, "
                f"max_abs_err={self.max_abs_err:.3g}, max_rel_err={self.max_rel_err:.3g})")


def gradcheck(fn, arrays, eps=1e-6, rtol=1e-4, atol=1e-6, seed=0, params=()):
    """Check the derived gradient of ``fn`` (Tensors -> Tensor) at ``arrays``.

    A non-scalar output is projected on fixed random weights first. ``params`` names
    Param tensors that ``fn`` creates whose gradients are checked too, at their
    stored values.
    Raises GradientError naming the worst element; returns a GradcheckResult.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    with graph_scope() as g:
        xs = [F.input(f"x{i}", a.shape) for i, a in enumerate(arrays)]
        out = fn(*xs)
        if not isinstance(out, Tensor) or out.graph is not g:
            raise GraphError(f"gradcheck: fn must return a Tensor built from its arguments, "
                             f"got {out!r}")
        if out.shape != ():
            w = np.random.default_rng(seed).standard_normal(out.shape)
            out = F.sum(out * F.constant(w))
        if isinstance(params, str):
            params = [params]
        wrt_params = [t for t in (g.tensor(n) for n in g.nx.nodes)
                      if t.op.kind == "param" and t.op.name in set(params)]
        missing = set(params) - {p.op.name for p in wrt_params}
        if missing:
            made = sorted(t.op.name for t in map(g.tensor, g.nx.nodes) if t.op.kind == "param")
            raise GraphError(f"gradcheck: params {sorted(missing)} were not created by fn; "
                             f"it created {made}")
        targets = xs + wrt_params
        grads = grad(out, targets)
        point = {t.id: a for t, a in zip(xs, arrays)}
        point.update({p.id: p.value.astype(np.float64) for p in wrt_params})

        def cost(values):
            feeds = {k: v for k, v in values.items() if k in {t.id for t in xs}}
            over = {k: v for k, v in values.items() if k not in feeds}
            return float(reference.evaluate(g, [out.id], feeds, np.float64, over)[0])

        analytic = reference.evaluate(g, [t.id for t in grads],
                                      {t.id: a for t, a in zip(xs, arrays)}, np.float64,
                                      {p.id: point[p.id] for p in wrt_params})
        checked = skipped = 0
        worst = (0.0, None)
        max_abs = max_rel = 0.0
        f0 = cost(point)
        if not np.isfinite(f0):
            raise GradientError(f"gradcheck: fn's (projected) value is {f0} at the given "
                                "point; choose a point inside its domain")

        def one_sided(t, idx, h):
            base = point[t.id]
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            fp, fm = cost({**point, t.id: plus}), cost({**point, t.id: minus})
            return (fp - f0) / h, (f0 - fm) / h

        for t, ga in zip(targets, analytic):
            base = point[t.id]
            for idx in np.ndindex(base.shape):
                right, left = one_sided(t, idx, eps)
                numeric = (right + left) / 2
                a = float(ga[idx])
                tol = atol + rtol * max(abs(a), abs(numeric))
                gap = abs(right - left)
                if gap > tol:
                    # The one-sided slopes disagree by more than the tolerance: curvature
                    # (the gap shrinks with the step) or a kink at this point (it does
                    # not). A smaller gap cannot move the central difference out of
                    # tolerance, so only these elements need the second look.
                    r2, l2 = one_sided(t, idx, eps / 2)
                    if abs(r2 - l2) > 0.75 * gap:
                        skipped += 1
                        continue
                checked += 1
                if not (np.isfinite(a) and np.isfinite(numeric)):
                    worst = (np.inf, (t, idx, a, numeric, base[idx]))   # never passes
                    continue
                err = abs(a - numeric)
                rel = err / max(abs(a), abs(numeric), 1e-12)
                max_abs, max_rel = max(max_abs, err), max(max_rel, rel)
                excess = err - tol
                if excess > worst[0] and worst[0] != np.inf:
                    worst = (excess, (t, idx, a, numeric, base[idx]))
        if worst[1] is not None:
            t, idx, a, numeric, x = worst[1]
            raise GradientError(
                f"gradcheck: gradient of {t.label()} (shape {t.shape}) at index {idx} "
                f"(value {x:.6g}): derived {a:.8g}, finite differences {numeric:.8g} "
                f"(abs error {abs(a - numeric):.3g}, rtol {rtol}, atol {atol}); "
                f"{checked} elements checked, {skipped} skipped at kinks")
        if checked == 0 and skipped:
            raise GradientError(f"gradcheck: all {skipped} elements sit on kinks; move "
                                "the point away from them")
        return GradcheckResult(checked, skipped, max_abs, max_rel)
