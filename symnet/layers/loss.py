"""Softmax, SoftmaxWithLoss and Accuracy (other loss layers live in losses.py)."""
from __future__ import annotations


import numpy as np

from .. import functions as F
from ..errors import ShapeError
from ._util import canonical_axis, split_at
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
    axis = canonical_axis(axis, x.ndim, "Softmax")
    outer, c, inner = split_at(x.shape, axis)
    x3 = F.reshape(x, (outer, c, inner))
    e = F.exp(x3 - F.max(x3, 1, keepdims=True))
    return F.reshape(e / F.sum(e, 1, keepdims=True), x.shape)


def _labels(label, outer, inner, what):
    if label.size != outer * inner:
        raise ShapeError(f"{what}: label blob {label.label()} has {label.size} elements "
                         f"{label.shape}, expected outer * inner = {outer * inner} "
                         "(one label per prediction)")
    return F.reshape(label, (outer, 1, inner))


def normalizer(mode, outer, inner, valid_count):
    """Caffe's LossParameter normalization: the divisor (at least 1)."""
    if mode == "FULL":
        return float(outer * inner)
    if mode == "VALID":
        return F.maximum(valid_count, 1.0)
    if mode == "BATCH_SIZE":
        return float(outer)
    if mode == "NONE":
        return 1.0
    raise ValueError(f"normalization {mode!r}: expected FULL, VALID, BATCH_SIZE or NONE")


@layer("SoftmaxWithLoss", params=("softmax_param", "loss_param"), loss=True)
def softmax_with_loss(x, label, axis=1, ignore_label=None, normalization="VALID",
                      normalize=None):
    """loss = -sum over predictions of log(max(softmax(x)[label], FLT_MIN)) / normalizer;
    predictions whose label is ignore_label count for nothing. A second top gives the
    softmax probabilities."""
    axis = canonical_axis(axis, x.ndim, "SoftmaxWithLoss")
    outer, c, inner = split_at(x.shape, axis)
    if normalize is not None:      # deprecated bool of old prototxt files
        normalization = "VALID" if normalize else "BATCH_SIZE"
    logp = _log_softmax(F.reshape(x, (outer, c, inner)))
    lab = _labels(label, outer, inner, "SoftmaxWithLoss")
    picked = F.maximum(F.gather(logp, lab, 1), LOG_FLT_MIN)
    if ignore_label is not None:
        valid = F.ne(lab, float(ignore_label))
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
    axis = canonical_axis(axis, x.ndim, "Accuracy")
    outer, c, inner = split_at(x.shape, axis)
    if not 1 <= top_k <= c:
        raise ValueError(f"top_k {top_k} must be between 1 and the number of classes {c}")
    x3 = F.reshape(x, (outer, c, inner))
    lab = _labels(label, outer, inner, "Accuracy")
    true = F.gather(x3, lab, 1)
    better = F.sum(F.ge(x3, true), 1, keepdims=True) - 1.0
    valid = F.ne(lab, float(ignore_label)) if ignore_label is not None else F.ones(lab.shape)
    correct = F.lt(better, float(top_k)) * valid
    n = F.sum(valid)
    acc = F.where(F.gt(n, 0.0), F.sum(correct) / F.maximum(n, 1.0), 0.0)
    classes = F.constant(np.arange(c, dtype=np.float32).reshape(1, c, 1))
    onehot = F.eq(lab, classes) * valid
    per_n = F.sum(onehot, (0, 2))
    per_c = F.sum(onehot * correct, (0, 2))
    per_class = F.where(F.gt(per_n, 0.0), per_c / F.maximum(per_n, 1.0), 0.0)
    return acc, per_class
