"""Caffe's other loss layers: SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss,
ContrastiveLoss, InfogainLoss and MultinomialLogisticLoss (SoftmaxWithLoss lives in
loss.py).

Each top is a 0-d loss. Labels are read as Caffe does (static_cast<int>) and get
no gradient. Where Caffe's hand-written backward is not the exact derivative of
its forward (clamps before a log, ContrastiveLoss's 1e-4), the formula below is
written so that the derived gradient is Caffe's (noted at each layer).
"""
from __future__ import annotations

import numpy as np

from .. import functions as F
from ..errors import ShapeError
from ._util import canonical_axis, require, show, split_at
from .loss import (_labels, _log_softmax, clamp_value_only, int_label, normalizer,
                   resolve_normalization, valid_mask)
from .registry import layer

LOG_THRESHOLD = 1e-20          # Caffe's kLOG_THRESHOLD (loss_layer.hpp)


def _same_num(a, b, what):
    """Caffe's LossLayer::Reshape: data and label share the first dimension."""
    na = a.shape[0] if a.ndim else 1
    nb = b.shape[0] if b.ndim else 1
    if na != nb:
        raise ShapeError(f"{what}: bottom 0 {a.shape} and bottom 1 {b.shape} must have the "
                         "same first dimension")
    return na


def _legacy_dims(t):
    """Caffe's legacy (num, channels, height, width) view of a blob of <= 4 axes."""
    if t.ndim > 4:
        raise ShapeError(f"blob {t.label()} has {t.ndim} axes {t.shape}; the legacy "
                         "accessors need at most 4")
    return tuple(t.shape) + (1,) * (4 - t.ndim)


# ------------------------------------------------------- SigmoidCrossEntropyLoss

@layer("SigmoidCrossEntropyLoss", params="loss_param", loss=True)
def sigmoid_cross_entropy_loss(x, target, ignore_label=None, normalization=None,
                               normalize=None):
    """loss = sum over elements of softplus(x) - x * t, divided by the normalizer.

    softplus(x) - x * t = -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))),
    evaluated without overflow (Caffe's "stable version"); t may be fractional.
    Elements whose int(t) is ignore_label count for nothing. The gradient is
    (sigmoid(x) - t) / normalizer, none to the targets.

    Normalization: outer = N, inner = count / N. Unlike SoftmaxWithLoss, Caffe's
    default here is BATCH_SIZE, not VALID: it only takes the proto's default
    (VALID) when ``normalization`` is set explicitly, else the deprecated
    ``normalize`` (true: VALID, false: BATCH_SIZE), else BATCH_SIZE."""
    if x.size != target.size:
        raise ShapeError(f"SigmoidCrossEntropyLoss: inputs must have the same count; "
                         f"got {x.shape} and {target.shape}")
    mode = resolve_normalization(normalization, normalize, default="BATCH_SIZE")
    outer = x.shape[0] if x.ndim else 1
    inner = x.size // outer
    t = F.reshape(F.stop_gradient(target), x.shape)
    per = F.softplus(x) - x * t
    if ignore_label is not None:
        valid = valid_mask(F.reshape(int_label(target), x.shape), ignore_label)
        per = F.where(valid, per, 0.0)
        count = F.sum(valid)
    else:
        count = float(x.size)
    return F.sum(per) / normalizer(mode, outer, inner, count)


# ---------------------------------------------------------------- EuclideanLoss

@layer("EuclideanLoss", params=(), loss=True)
def euclidean_loss(a, b):
    """loss = sum((a - b)^2) / N / 2; both bottoms get a diff (+-(a - b) / N)."""
    n = _same_num(a, b, "EuclideanLoss")
    if a.size != b.size:
        raise ShapeError(f"EuclideanLoss: inputs must have the same dimension; got "
                         f"{a.shape} and {b.shape}")
    d = a - F.reshape(b, a.shape)
    return F.sum(d * d) * (0.5 / n)


# -------------------------------------------------------------------- HingeLoss

@layer("HingeLoss", params="hinge_loss_param", loss=True)
def hinge_loss(x, label, norm="L1"):
    """t[n, k] = max(0, 1 + s x[n, k]) with s = -1 at k = label[n], +1 elsewhere
    (x flattened per item to count / N values); loss = sum t / N (L1) or
    sum t^2 / N (L2). The L1 gradient is s * sign(t) / N, 0 where t = 0 (Caffe's
    caffe_cpu_sign), which the strict test below reproduces."""
    require(norm in ("L1", "L2"), "hinge_loss_param.norm", norm, "L1 or L2")
    n = _same_num(x, label, "HingeLoss")
    dim = x.size // n
    if label.size != n:
        raise ShapeError(f"HingeLoss: label blob {label.shape} must hold one label per "
                         f"item ({n})")
    x2 = F.reshape(x, (n, dim))
    lab = F.reshape(int_label(label), (n, 1))
    classes = F.constant(np.arange(dim, dtype=np.float32).reshape(1, dim))
    sign = 1.0 - 2.0 * F.eq(lab, classes)
    m = x2 * sign + 1.0
    t = F.where(F.gt(m, 0.0), m, 0.0)
    if norm == "L1":
        return F.sum(t) * (1.0 / n)
    return F.sum(t * t) * (1.0 / n)


# -------------------------------------------------------------- ContrastiveLoss

@layer("ContrastiveLoss", params="contrastive_loss_param", loss=True)
def contrastive_loss(a, b, y, margin=1.0, legacy_version=False):
    """d^2 = ||a_n - b_n||^2 per pair; loss = sum over pairs / N / 2 of
        d^2                       similar pairs (int(y) != 0),
        max(margin - d, 0)^2      dissimilar pairs,
        max(margin - d^2, 0)      dissimilar pairs with legacy_version.
    Bottoms are (N, C) or (N, C, 1, 1); y holds N values.

    Caffe's backward for a dissimilar pair divides by d + 1e-4 instead of d (the
    derivative of d), which also keeps it finite at d = 0; d is built here so
    that its derived gradient is (a - b) / (d + 1e-4): value sqrt(d^2), gradient
    that of d^2 / (2 (d + 1e-4))."""
    na, ca, ha, wa = _legacy_dims(a)
    nb, cb, hb, wb = _legacy_dims(b)
    ny, cy, hy, wy = _legacy_dims(y)
    if ca != cb or (ha, wa, hb, wb) != (1, 1, 1, 1) or (cy, hy, wy) != (1, 1, 1):
        raise ShapeError(f"ContrastiveLoss: bottoms must be (N, C, 1, 1), (N, C, 1, 1) and "
                         f"(N, 1, 1, 1); got {a.shape}, {b.shape} and {y.shape}")
    if not na == nb == ny:
        raise ShapeError(f"ContrastiveLoss: bottoms {a.shape}, {b.shape} and {y.shape} "
                         "must have the same first dimension")
    diff = F.reshape(a, (na, ca)) - F.reshape(b, (na, ca))
    dist_sq = F.sum(diff * diff, 1)
    similar = F.ne(F.reshape(int_label(y), (na,)), 0.0)
    if legacy_version:
        m = float(margin) - dist_sq
        dissimilar = F.where(F.gt(m, 0.0), m, 0.0)
    else:
        d_fixed = F.stop_gradient(F.sqrt(dist_sq))
        dist = d_fixed + (dist_sq - F.stop_gradient(dist_sq)) / (2.0 * (d_fixed + 1e-4))
        m = float(margin) - dist
        pos = F.where(F.gt(m, 0.0), m, 0.0)
        dissimilar = pos * pos
    per = F.where(similar, dist_sq, dissimilar)
    return F.sum(per) * (0.5 / na)


# ----------------------------------------------------------------- InfogainLoss

def _infogain_matrix(source):
    from ..formats import prototxt
    return np.asarray(prototxt.read_blobproto(source), dtype=np.float32)


@layer("InfogainLoss", params=("infogain_loss_param", "loss_param"), loss=True)
def infogain_loss(x, label, h=None, source=None, axis=1, ignore_label=None,
                  normalization="VALID", normalize=None):
    """p = softmax(x) along ``axis``; loss = -sum over (non-ignored) predictions of
    sum_l H[label, l] * log(max(p_l, 1e-20)), divided by the normalizer (Caffe's
    LossParameter modes, default VALID; ``normalize`` is refused as in Caffe).

    H (C x C) is bottom[2] or the BlobProto file infogain_loss_param.source; it
    gets no gradient. Caffe (master) applies the softmax itself: bottom[0] holds
    scores, not probabilities. The gradient is Caffe's
    (p_k * sum_l H[label, l] - H[label, k]) / normalizer, also where the clamp is
    active. A second top gives the softmax."""
    if normalize is not None:
        # Caffe: CHECK(!has_normalize()) "normalize is deprecated. use normalization"
        raise ValueError(f"loss_param.normalize {show(normalize)}: normalize is deprecated for "
                         "InfogainLoss; use normalization")
    normalization = resolve_normalization(normalization, None)
    ax = canonical_axis(axis, x.ndim, "infogain_loss_param.axis")
    outer, c, inner = split_at(x.shape, ax)
    if h is None:
        if not source:
            raise ValueError("infogain_loss_param.source (not set): the infogain matrix H "
                             "must be given as bottom[2] or as infogain_loss_param.source")
        h = F.constant(_infogain_matrix(source))
    else:
        h = F.stop_gradient(h)
    if h.size != c * c:
        raise ShapeError(f"InfogainLoss: H has {h.size} elements {h.shape}; it must be "
                         f"{c} x {c} for {c} labels")
    h = F.reshape(h, (c, c))
    logp = _log_softmax(F.reshape(x, (outer, c, inner)))
    lab = _labels(label, outer, inner, "InfogainLoss")            # (outer, 1, inner)
    # rows[m, l] = H[label_m, l], m over (outer, inner)
    m = outer * inner
    idx = F.broadcast_to(F.reshape(F.transpose(lab, (0, 2, 1)), (m, 1)), (m, c))
    rows = F.transpose(F.reshape(F.gather(h, idx, 0), (outer, inner, c)), (0, 2, 1))
    per = F.sum(rows * clamp_value_only(logp, float(np.log(LOG_THRESHOLD))), 1,
                keepdims=True)
    if ignore_label is not None:
        valid = valid_mask(lab, ignore_label)
        per = F.where(valid, per, 0.0)
        count = F.sum(valid)
    else:
        count = float(m)
    loss = -F.sum(per) / normalizer(normalization, outer, inner, count)
    return loss, F.reshape(F.exp(logp), x.shape)


# ------------------------------------------------------ MultinomialLogisticLoss

@layer("MultinomialLogisticLoss", params=(), loss=True)
def multinomial_logistic_loss(p, label):
    """loss = -sum_n log(max(p[n, label_n], 1e-20)) / N, p flattened per item
    (bottom[0] holds probabilities). The gradient is Caffe's
    -1 / (N max(p, 1e-20)) at the label, also where the clamp is active."""
    n = _same_num(p, label, "MultinomialLogisticLoss")
    _, lc, lh, lw = _legacy_dims(label)
    if (lc, lh, lw) != (1, 1, 1):
        raise ShapeError(f"MultinomialLogisticLoss: label blob {label.shape} must be "
                         "(N, 1, 1, 1): one label per item")
    dim = p.size // n
    picked = F.gather(F.reshape(p, (n, dim)), F.reshape(int_label(label), (n, 1)), 1)
    return -F.sum(F.log(clamp_value_only(picked, LOG_THRESHOLD))) * (1.0 / n)
