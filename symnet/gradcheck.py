"""Finite-difference gradient checking on the float64 reference.

Central differences step ``eps`` each way. Where the one-sided differences disagree,
the point sits on a kink (ReLU at 0, max ties): like Caffe's GradientChecker, such
elements are stepped off (skipped) and counted, not compared.
"""
from __future__ import annotations

import numpy as np

from . import functions as F
from . import reference
from .autodiff import grad
from .errors import GradientError
from .graph import graph_scope


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
        if out.shape != ():
            w = np.random.default_rng(seed).standard_normal(out.shape)
            out = F.sum(out * F.constant(w))
        wrt_params = [t for t in (g.tensor(n) for n in g.nx.nodes)
                      if t.op.kind == "param" and t.op.name in set(params)]
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
        for t, ga in zip(targets, analytic):
            base = point[t.id]
            for idx in np.ndindex(base.shape):
                plus, minus = base.copy(), base.copy()
                plus[idx] += eps
                minus[idx] -= eps
                fp = cost({**point, t.id: plus})
                fm = cost({**point, t.id: minus})
                right, left = (fp - f0) / eps, (f0 - fm) / eps
                numeric = (fp - fm) / (2 * eps)
                scale = max(abs(right), abs(left), 1.0)
                if abs(right - left) > 1e-2 * scale:
                    skipped += 1
                    continue
                checked += 1
                a = float(ga[idx])
                err = abs(a - numeric)
                rel = err / max(abs(a), abs(numeric), 1e-12)
                max_abs, max_rel = max(max_abs, err), max(max_rel, rel)
                excess = err - (atol + rtol * max(abs(a), abs(numeric)))
                if excess > worst[0]:
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
