"""ReLU and Dropout (the rest of Caffe's neuron layers live in neuron.py)."""
from __future__ import annotations

from .. import functions as F
from ._util import random_stream, require
from .registry import context, layer


@layer("ReLU", params="relu_param")   # not "re_lu_param"
def relu(x, negative_slope=0.0):
    """y = x for x > 0, negative_slope * x otherwise (gradient at 0: negative_slope,
    as Caffe, which tests x > 0)."""
    if negative_slope == 0:
        # max(x, 0) keeps NaN a NaN, as Caffe does; where(x > 0, x, 0 * x) would not,
        # since sympy folds 0 * x to 0. Its derived gradient at 0 is 0, Caffe's too.
        return F.maximum(x, 0.0)
    return F.where(x > 0, x, x * negative_slope)


@layer("Dropout")
def dropout(x, dropout_ratio=0.5, scale_train=True):
    """TRAIN: y = x * mask * scale with mask ~ Bernoulli(1 - ratio), scale = 1/(1 - ratio)
    when scale_train; TEST: y = x (or x * (1 - ratio) without scale_train). Caffe's
    own random stream cannot be reproduced: masks come from symnet's Philox generator,
    with a new stream each iteration."""
    # Caffe only DCHECKs 0 < ratio < 1 (debug builds); a ratio of 1 would scale by
    # 1 / 0 and one outside [0, 1] has no meaning, so those are refused here
    require(0.0 <= dropout_ratio < 1.0, "dropout_param.dropout_ratio", dropout_ratio,
            "in [0, 1)")
    ctx = context()
    scale = 1.0 / (1.0 - dropout_ratio)
    if ctx.phase != "TRAIN":
        return x if scale_train else x * (1.0 - dropout_ratio)
    seed = random_stream(ctx.name)
    u = F.uniform(x.shape, seed=seed, counter=ctx.counter)
    keep = u >= dropout_ratio
    return x * keep * (scale if scale_train else 1.0)
