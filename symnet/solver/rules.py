"""The update rules: one entry per solver type (Caffe's ``src/caffe/solvers/*.cpp``).

Each rule builds, for one class of params, the new param and histories as Tensors from
the param ``p``, its gradient ``g`` (after clipping, normalisation and weight decay),
its histories ``hs``, the rate ``lr`` (a scalar input), the class's ``lr_mult`` ``lm``
(a number; Caffe's local_rate is ``lr * lm``) and the extra scalar inputs
(``scalars(param, iter)``: Adam's bias correction). ``check`` rejects a
SolverParameter the type cannot use; ``n_histories`` is the number of history sets
(the second set follows the first in the .solverstate, as Caffe lays them out)."""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import numpy as np

from .. import functions as F
from .common import SolverError, _f32


class UpdateRule(NamedTuple):
    rule: Callable
    n_histories: int = 1
    check: Optional[Callable] = None
    scalars: Optional[Callable] = None


def sgd(param, p, g, hs, lr, lm, scalars):
    m = _f32(param.momentum)
    h = F.elementwise(lambda h, g, r: m * h + (r * lm) * g, hs[0], g, lr,
                      label="sgd_history")
    return F.elementwise(lambda p, h: p - h, p, h, label="sgd_param"), [h]


def nesterov(param, p, g, hs, lr, lm, scalars):
    m = _f32(param.momentum)
    h = F.elementwise(lambda h, g, r: m * h + (r * lm) * g, hs[0], g, lr,
                      label="nesterov_history")
    upd = F.elementwise(lambda hn, ho: (1 + m) * hn - m * ho, h, hs[0],
                        label="nesterov_step")
    return F.elementwise(lambda p, u: p - u, p, upd, label="nesterov_param"), [h]


def check_adagrad(param):
    if param.momentum != 0:
        raise SolverError("Momentum cannot be used with AdaGrad.")


def adagrad(param, p, g, hs, lr, lm, scalars):
    import sympy as sp
    d = _f32(param.delta)
    h = F.elementwise(lambda h, g: h + g * g, hs[0], g, label="adagrad_history")
    new = F.elementwise(lambda p, g, h, r: p - (r * lm) * (g / (sp.sqrt(h) + d)), p, g, h, lr,
                        label="adagrad_param")
    return new, [h]


def check_rmsprop(param):
    if param.momentum != 0:
        raise SolverError("Momentum cannot be used with RMSProp.")
    if not 0 <= param.rms_decay <= 1:
        raise SolverError(f"rms_decay should lie between 0 and 1, got {param.rms_decay}")


def rmsprop(param, p, g, hs, lr, lm, scalars):
    import sympy as sp
    d = _f32(param.delta)
    rd = _f32(param.rms_decay)
    one_minus = _f32(np.float32(1) - np.float32(rd))
    h = F.elementwise(lambda h, g: rd * h + one_minus * (g * g), hs[0], g,
                      label="rmsprop_history")
    new = F.elementwise(lambda p, g, h, r: p - (r * lm) * (g / (sp.sqrt(h) + d)), p, g, h, lr,
                        label="rmsprop_param")
    return new, [h]


def adadelta(param, p, g, hs, lr, lm, scalars):
    import sympy as sp
    m = _f32(param.momentum)
    om = _f32(np.float32(1) - np.float32(m))
    d = _f32(param.delta)
    h = F.elementwise(lambda h, g: om * (g * g) + m * h, hs[0], g,
                      label="adadelta_history")
    u = F.elementwise(lambda g, h2, h: g * sp.sqrt((h2 + d) / (h + d)), g, hs[1], h,
                      label="adadelta_step")
    h2 = F.elementwise(lambda h2, u: om * (u * u) + m * h2, hs[1], u,
                       label="adadelta_history2")
    new = F.elementwise(lambda p, u, r: p - (r * lm) * u, p, u, lr, label="adadelta_param")
    return new, [h, h2]


def adam_scalars(param, it):
    b1, b2 = param.momentum, param.momentum2
    t = it + 1
    b1, b2 = float(np.float32(b1)), float(np.float32(b2))
    return [_f32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))]


def adam(param, p, g, hs, lr, lm, scalars):
    import sympy as sp
    b1, b2 = _f32(param.momentum), _f32(param.momentum2)
    ob1, ob2 = _f32(np.float32(1) - np.float32(b1)), _f32(np.float32(1) - np.float32(b2))
    eps = _f32(param.delta)
    m = F.elementwise(lambda m, g: ob1 * g + b1 * m, hs[0], g, label="adam_m")
    v = F.elementwise(lambda v, g: ob2 * (g * g) + b2 * v, hs[1], g, label="adam_v")
    new = F.elementwise(lambda p, m, v, r, c: p - ((r * lm) * c) * (m / (sp.sqrt(v) + eps)),
                        p, m, v, lr, scalars[0], label="adam_param")
    return new, [m, v]


RULES = {
    "SGD": UpdateRule(sgd),
    "Nesterov": UpdateRule(nesterov),
    "AdaGrad": UpdateRule(adagrad, check=check_adagrad),
    "RMSProp": UpdateRule(rmsprop, check=check_rmsprop),
    "AdaDelta": UpdateRule(adadelta, n_histories=2),
    "Adam": UpdateRule(adam, n_histories=2, scalars=adam_scalars),
}
