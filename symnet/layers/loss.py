"""Softmax, SoftmaxWithLoss and Accuracy (other loss layers live in losses.py)."""
from __future__ import annotations

import numpy as np
import sympy as sp

from .. import functions as F
from ..errors import ShapeError
from ._util import canonical_axis, is_int, require, split_at
from .registry import layer

LOG_FLT_MIN = float(np.log(np.finfo(np.float32).tiny))   # Caffe clamps prob at FLT_MIN


def _log_softmax(x3):
    """log softmax of (outer, C, inner) along axis 1."""
    m = F.max(x3, 1, keepdims=True)
    z = x3 - m
    return z - F.log(F.sum(F.exp(z), 1, keepdims=True))


@layer("Softmax")
def softmax(x, axis=1):
    """y = exp(x - max) / sum exp(x - max) along ``axis``."""
    axis = canonical_axis(axis, x.ndim, "softmax_param.axis")
    outer, c, inner = split_at(x.shape, axis)
    x3 = F.reshape(x, (outer, c, inner))
    e = F.exp(x3 - F.max(x3, 1, keepdims=True))
    return F.reshape(e / F.sum(e, 1, keepdims=True), x.shape)


def int_label(label):
    """Caffe reads a label as static_cast<int>(value): truncation toward zero. The
    result has no gradient (Caffe's loss layers cannot back-propagate to labels)."""
    def trunc(a):
        return sp.Piecewise((sp.floor(a), a >= 0), (sp.ceiling(a), True))
    return F.elementwise(trunc, F.stop_gradient(label), label="trunc")


def clamp_value_only(v, lo):
    """max(v, lo) in value, with the gradient of v: Caffe clamps a probability (or
    its log) before taking the log in forward, but its hand-written backward uses
    the unclamped formula (prob - 1, or -1 / max(prob, lo))."""
    return v + F.stop_gradient(F.maximum(v, lo) - v)


def valid_mask(lab, ignore_label):
    """1 where an (integer) label is not ignore_label, else 0; a constant for autodiff.
    (The stop also keeps codegen's fusion from putting the forward's and the
    backward's uses of the mask in one elementwise kernel: with the forward's
    reduction between them that made a cycle of kernels, NetworkXUnfeasible in
    fusion._select_stored.)"""
    return F.stop_gradient(F.ne(lab, float(ignore_label)))


def _labels(label, outer, inner, what):
    if label.size != outer * inner:
        raise ShapeError(f"{what}: label blob {label.label()} has {label.size} elements "
                         f"{label.shape}, expected outer * inner = {outer * inner} "
                         "(one label per prediction)")
    return F.reshape(int_label(label), (outer, 1, inner))


NORMALIZATIONS = ("FULL", "VALID", "BATCH_SIZE", "NONE")


def resolve_normalization(normalization, normalize, default="VALID"):
    """Caffe's LossParameter: ``normalization`` if set, else the deprecated bool
    ``normalize`` (true: VALID, false: BATCH_SIZE), else ``default``."""
    if normalization is not None:
        require(normalization in NORMALIZATIONS, "loss_param.normalization", normalization,
                "FULL, VALID, BATCH_SIZE or NONE")
        return normalization
    if normalize is not None:
        return "VALID" if normalize else "BATCH_SIZE"
    return default


def normalizer(mode, outer, inner, valid_count):
    """Caffe's LossParameter normalization: the divisor (at least 1)."""
    if mode == "FULL":
        return float(outer * inner)
    if mode == "VALID":
        if isinstance(valid_count, (int, float)):
            # a Python number stays one: F.maximum of two numbers would make a
            # 0-input graph node (which could also trip codegen's fusion into a
            # kernel cycle)
            return float(max(valid_count, 1))
        # the count depends on labels only: no gradient flows through it (the stop
        # also keeps codegen's fusion from a kernel cycle, as in valid_mask)
        return F.stop_gradient(F.maximum(valid_count, 1.0))
    if mode == "BATCH_SIZE":
        return float(outer)
    if mode == "NONE":
        return 1.0
    require(False, "loss_param.normalization", mode, "FULL, VALID, BATCH_SIZE or NONE")


@layer("SoftmaxWithLoss", params=("softmax_param", "loss_param"), loss=True)
def softmax_with_loss(x, label, axis=1, ignore_label=None, normalization=None,
                      normalize=None):
    """loss = -sum over predictions of log(max(softmax(x)[label], FLT_MIN)) / normalizer;
    predictions whose label is ignore_label count for nothing. The normalizer is
    max(1, count) for FULL (all predictions), VALID (default: the non-ignored ones),
    BATCH_SIZE (outer) or NONE (1); the deprecated ``normalize`` picks VALID or
    BATCH_SIZE when ``normalization`` is not set. A second top gives the softmax.
    The gradient is Caffe's (softmax - onehot) / normalizer, also where the FLT_MIN
    clamp is active."""
    axis = canonical_axis(axis, x.ndim, "softmax_param.axis")
    outer, c, inner = split_at(x.shape, axis)
    # Caffe: the deprecated bool only counts when normalization is not set
    normalization = resolve_normalization(normalization, normalize)
    logp = _log_softmax(F.reshape(x, (outer, c, inner)))
    lab = _labels(label, outer, inner, "SoftmaxWithLoss")
    picked = clamp_value_only(F.gather(logp, lab, 1), LOG_FLT_MIN)
    if ignore_label is not None:
        valid = valid_mask(lab, ignore_label)
        picked = picked * valid
        count = F.sum(valid)
    else:
        count = float(outer * inner)
    loss = -F.sum(picked) / normalizer(normalization, outer, inner, count)
    return loss, F.reshape(F.exp(logp), x.shape)


@layer("Accuracy")
def accuracy(x, label, top_k=1, axis=1, ignore_label=None):
    """Fraction of predictions whose label's score has fewer than top_k scores >= it
    (ties count against, as Caffe); ignored labels are skipped. A second top gives the
    accuracy per class."""
    axis = canonical_axis(axis, x.ndim, "accuracy_param.axis")
    outer, c, inner = split_at(x.shape, axis)
    # Caffe: CHECK_LE(top_k_, bottom[0]->count() / bottom[1]->count()) "top_k must be
    # less than or equal to the number of classes". It takes top_k 0 (an accuracy of
    # 0 always); symnet has always refused it.
    require(is_int(top_k) and 1 <= top_k <= c, "accuracy_param.top_k", top_k,
            f"between 1 and the number of classes {c}")
    top_k = int(top_k)
    x3 = F.reshape(x, (outer, c, inner))
    lab = _labels(label, outer, inner, "Accuracy")
    true = F.gather(x3, lab, 1)
    better = F.sum(F.ge(x3, true), 1, keepdims=True) - 1.0
    valid = valid_mask(lab, ignore_label) if ignore_label is not None else F.ones(lab.shape)
    correct = F.lt(better, float(top_k)) * valid
    n = F.sum(valid)
    acc = F.where(F.gt(n, 0.0), F.sum(correct) / F.maximum(n, 1.0), 0.0)
    classes = F.constant(np.arange(c, dtype=np.float32).reshape(1, c, 1))
    onehot = F.eq(lab, classes) * valid
    per_n = F.sum(onehot, (0, 2))
    per_c = F.sum(onehot * correct, (0, 2))
    per_class = F.where(F.gt(per_n, 0.0), per_c / F.maximum(per_n, 1.0), 0.0)
    return acc, per_class
