"""Caffe's learning rate policies (SGDSolver::GetLearningRate)."""
from __future__ import annotations

import math

from .common import SolverError, _f32, log

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def learning_rate(param, it, current_step=0):
    """(rate, current_step) of Caffe's SGDSolver::GetLearningRate at iteration ``it``.

    ``current_step`` is the solver's state for ``step`` and ``multistep`` (multistep
    moves at most one step per call, as Caffe's does)."""
    policy = param.lr_policy
    base = param.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        if param.stepsize <= 0:
            raise SolverError(f'lr_policy "step" needs stepsize > 0, got {param.stepsize}')
        current_step = it // param.stepsize
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "exp":
        rate = base * math.pow(param.gamma, it)
    elif policy == "inv":
        rate = base * math.pow(1.0 + param.gamma * it, -param.power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
        rate = base * math.pow(param.gamma, current_step)
    elif policy == "poly":
        if param.max_iter <= 0:
            raise SolverError(f'lr_policy "poly" needs max_iter > 0, got {param.max_iter}')
        rate = base * math.pow(1.0 - it / param.max_iter, param.power)
    elif policy == "sigmoid":
        if param.stepsize <= 0:
            raise SolverError(f'lr_policy "sigmoid" needs stepsize > 0, got {param.stepsize}')
        rate = base * (1.0 / (1.0 + math.exp(-param.gamma * (it - param.stepsize))))
    elif not policy:
        raise SolverError("the solver sets no lr_policy; expected one of "
                          + ", ".join(f'"{p}"' for p in POLICIES))
    else:
        raise SolverError(f'unknown lr_policy "{policy}"; expected one of '
                          + ", ".join(f'"{p}"' for p in POLICIES))
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise SolverError(f'lr_policy "{policy}" needs gamma >= 0, got {param.gamma}')
    return _f32(rate), current_step

