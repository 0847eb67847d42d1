"""``sn.check_layer``: any layer's backward against finite differences.

Caffe had its GradientChecker only in its C++ test suite. Here one call checks a
symbolic layer (its derived backward, bottoms and learnable blobs, in float64 on the
reference) or a Caffe Python layer class (its hand-written backward, in float32 with
Caffe's checker settings: step 1e-2, threshold 1e-3 relative to max(|a|, |n|, 1)).
"""
from __future__ import annotations

import numpy as np

from .errors import GradientError
from .gradcheck import gradcheck
from .graph import graph_scope
from .layers import registry


def check_layer(layer, bottom_shapes, params=None, param_str="", phase="TRAIN", seed=0,
                bottoms=None, top=0, ntop=1, **kwargs):
    """Check ``layer``'s gradients for bottoms of ``bottom_shapes``.

    ``layer``: a Caffe type name or ``@sn.layer`` function (keyword parameters in
    ``params``), or a Python layer class (``param_str`` and ``ntop`` for it). ``top``
    selects the top checked; ``bottoms`` gives the input arrays instead of seeded
    normal ones. Returns a summary; raises GradientError naming the worst element.
    """
    rng = np.random.default_rng(seed)
    arrays = bottoms if bottoms is not None else \
        [rng.standard_normal(s) for s in bottom_shapes]
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    type_name = layer if isinstance(layer, str) else getattr(layer, "layer_type", None)
    if type_name is not None:
        return _check_symbolic(type_name, arrays, dict(params or {}, **kwargs), phase, top)
    return _check_python(layer, arrays, param_str, phase, rng, top, ntop, **kwargs)


def _check_symbolic(type_name, arrays, params, phase, top):
    names = []

    def build(*xs):
        tops, ctx = registry.apply(type_name, *xs, name="L", phase=phase, **params)
        names[:] = [d.tensor.name for d in ctx.params]
        return tops[top]

    with graph_scope():       # learn the param names first
        from . import functions as F
        build(*[F.input(f"x{i}", a.shape) for i, a in enumerate(arrays)])
    return gradcheck(build, arrays, params=names)


def _check_python(cls, arrays, param_str, phase, rng, top, ntop, step=1e-2, threshold=1e-3,
                  kink=None, kink_range=-1.0):
    from .formats.proto import caffe_pb2
    from .net import TEST, TRAIN
    from .pylayer import PythonLayerRunner
    lp = caffe_pb2.LayerParameter(name=getattr(cls, "__name__", "python"), type="Python")
    lp.python_param.param_str = param_str
    lp.python_param.module = getattr(cls, "__module__", "")
    lp.top.extend(f"top{k}" for k in range(max(ntop, top + 1)))
    runner = PythonLayerRunner(cls, lp, TRAIN if phase == "TRAIN" else TEST,
                               [a.shape for a in arrays], f"layer {lp.name} (Python)")
    bottoms = [a.astype(np.float32) for a in arrays]
    weights = rng.standard_normal(runner.top_shapes[top]).astype(np.float32)

    def loss():
        tops = [np.zeros(s, np.float32) for s in runner.top_shapes]
        runner.forward_into(bottoms, tops)
        return float(np.sum(tops[top].astype(np.float64) * weights)), tops

    _, tops = loss()
    args = bottoms + [p.data for p in runner.params]
    grads = [np.zeros(a.shape, np.float32) for a in args]
    runner.backward_into(args, tops, top, weights, list(range(len(args))), grads)
    checked = 0
    for i, (a, g) in enumerate(zip(args, grads)):
        label = f"bottom {i}" if i < len(bottoms) else f"blob {i - len(bottoms)}"
        for idx in np.ndindex(a.shape):
            x = float(a[idx])
            if kink is not None and abs(x - kink) <= kink_range:
                continue
            a[idx] = x + step
            fp, _ = loss()
            a[idx] = x - step
            fm, _ = loss()
            a[idx] = x
            numeric = (fp - fm) / (2 * step)
            analytic = float(g[idx])
            scale = max(abs(analytic), abs(numeric), 1.0)
            if abs(analytic - numeric) > threshold * scale:
                raise GradientError(
                    f"check_layer: Python layer {lp.name}: gradient of {label} at {idx} "
                    f"(value {x:.6g}): backward gives {analytic:.6g}, finite differences "
                    f"{numeric:.6g} (step {step}, threshold {threshold})")
            checked += 1
    return {"checked": checked}
