"""Caffe's normalization and parametric layers: PReLU, BatchNorm, Scale, Bias, MVN,
LRN and Embed, with Caffe's blob shapes and orders."""
from __future__ import annotations

from .. import functions as F
from ..errors import ShapeError
from ..ops.window import LRN as LRNOp
from ._util import canonical_axis, is_int, require
from .registry import context, layer, layer_param, state_update


def _channel_view(t, ndim, axis=1):
    """A (C,) tensor reshaped to broadcast along ``axis`` of an ndim-d blob."""
    return F.reshape(t, tuple(t.size if i == axis else 1 for i in range(ndim)))


# ------------------------------------------------------------------------ PReLU

@layer("PReLU", params="prelu_param")
def prelu(x, filler=None, channel_shared=False):
    """y = x for x > 0, a[c] * x otherwise; a is [C] (one slope per channel, axis 1)
    or, with channel_shared, a blob of shape [] (Caffe makes it 0-d, count 1).
    The filler defaults to constant 0.25. The gradient at x = 0 is a[c] (Caffe
    tests x > 0 for the identity side)."""
    if x.ndim < 2:
        raise ShapeError(f"PReLU: bottom {x.label()} has {x.ndim} axes {x.shape}, "
                         "expected at least 2 (N, C, ...)")
    if filler is None:
        filler = {"type": "constant", "value": 0.25}
    c = x.shape[1]
    a = layer_param(() if channel_shared else (c,), filler)
    slope = F.reshape(a, (1,) * x.ndim) if channel_shared else _channel_view(a, x.ndim)
    return F.where(x > 0, x, x * slope)


# -------------------------------------------------------------------- BatchNorm

def _freeze_statistics(ctx, first):
    """Caffe's BatchNormLayer adds a ParamSpec with lr_mult 0 for each of its blobs
    that has none, and refuses a ParamSpec with a non-zero lr_mult: the statistics
    are not learned. (The upgrader zeroes the three specs of old-style layers.)"""
    for i, decl in enumerate(ctx.params[first:], first):
        if i < len(ctx.param_specs):
            if decl.lr_mult != 0:
                raise ValueError(f"param {i} has lr_mult {decl.lr_mult}: cannot configure "
                                 "batch normalization statistics as layer parameters "
                                 "(use lr_mult: 0)")
        else:
            decl.lr_mult = 0.0


@layer("BatchNorm")
def batch_norm(x, use_global_stats=None, moving_average_fraction=0.999, eps=1e-5):
    """y = (x - mean[c]) / sqrt(var[c] + eps), statistics per channel (axis 1) over
    every other axis.

    Blobs: [mean_sum (C), var_sum (C), scale_factor (1)], zero-filled, lr_mult 0.
    use_global_stats (default: phase == TEST) normalizes with the stored sums
    divided by scale_factor (0 when scale_factor is 0, so a fresh layer computes
    x / sqrt(eps)). Otherwise the batch statistics are used (biased variance)
    and, after the forward, as in Caffe:
        scale_factor = scale_factor * maf + 1
        mean_sum     = mean_sum * maf + batch_mean
        var_sum      = var_sum * maf + batch_var * m / (m - 1)   (m = count / C;
                                                                  factor 1 if m == 1)
    The update happens whenever batch statistics are used, in TEST phase too
    (Caffe does not look at the phase there). The gradient in that mode flows
    through the batch mean and variance, as Caffe's backward does."""
    ctx = context()
    # a 1-axis blob counts as one channel in Caffe
    c = x.shape[1] if x.ndim > 1 else 1
    first = len(ctx.params)
    mean_sum = layer_param((c,))
    var_sum = layer_param((c,))
    factor = layer_param((1,))
    _freeze_statistics(ctx, first)
    if use_global_stats is None:
        use_global_stats = ctx.phase == "TEST"
    axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim > 1 else (0,)
    if use_global_stats:
        nonzero = F.ne(factor, 0.0)
        inv = F.where(nonzero, 1.0 / F.where(nonzero, factor, 1.0), 0.0)
        mean = mean_sum * inv
        var = var_sum * inv
        centered = x - _channel_view(mean, x.ndim)
    else:
        mean = F.reshape(F.mean(x, axes), (c,))
        centered = x - _channel_view(mean, x.ndim)
        var = F.reshape(F.mean(centered * centered, axes), (c,))
        m = x.size // c
        correction = m / (m - 1) if m > 1 else 1.0
        maf = float(moving_average_fraction)
        state_update(factor, factor * maf + 1.0)
        state_update(mean_sum, mean_sum * maf + F.stop_gradient(mean))
        state_update(var_sum, var_sum * maf + F.stop_gradient(var) * correction)
    return centered / _channel_view(F.sqrt(var + float(eps)), x.ndim)


# ---------------------------------------------------------------- Scale and Bias

def _blob_shape(x, axis, num_axes, param):
    """The shape of a learned scale/bias: x.shape[axis : axis + num_axes], to the
    end when num_axes is -1."""
    axis = canonical_axis(axis, x.ndim, f"{param}.axis")
    # Caffe: CHECK_GE(num_axes, -1) "num_axes must be non-negative, or -1 to extend to
    # the end of bottom[0]"; CHECK_GE(bottom[0]->num_axes(), axis + num_axes)
    require(is_int(num_axes) and num_axes >= -1, f"{param}.num_axes", num_axes,
            "non-negative, or -1 to extend to the end of bottom[0]")
    num_axes = int(num_axes)
    if num_axes >= 0 and x.ndim < axis + num_axes:
        raise ShapeError(f"{param}.num_axes {num_axes}: the blob shape extends past "
                         f"bottom[0]'s shape {x.shape} when applied from axis {axis}")
    return x.shape[axis:] if num_axes == -1 else x.shape[axis:axis + num_axes]


def _broadcast_along(x, t, axis, param):
    """t (shape x.shape[axis:axis + t.ndim]) reshaped to broadcast against x. A 0-d t
    applies everywhere; Caffe then sets axis = 0 whatever the parameter says."""
    axis = 0 if t.ndim == 0 else canonical_axis(axis, x.ndim, f"{param}.axis")
    n = t.ndim
    if x.ndim < axis + n or tuple(x.shape[axis:axis + n]) != tuple(t.shape):
        raise ShapeError(f"{param}.axis {axis}: {t.label()} of shape {t.shape} does not "
                         f"match bottom[0] shape {x.shape} from axis {axis}")
    return F.reshape(t, (1,) * axis + tuple(t.shape) + (1,) * (x.ndim - axis - n))


@layer("Bias")
def bias(x, b=None, axis=1, num_axes=1, filler=None):
    """y = x + b, b broadcast along x's axes axis .. axis + b.ndim - 1. b is bottom[1]
    when given (its own shape decides; num_axes is ignored), else a learned blob of
    shape x.shape[axis : axis + num_axes] (num_axes -1: to the end) filled by
    ``filler`` (default constant 0)."""
    if b is None:
        b = layer_param(_blob_shape(x, axis, num_axes, "bias_param"), filler)
    return x + _broadcast_along(x, b, axis, "bias_param")


@layer("Scale")
def scale(x, s=None, axis=1, num_axes=1, filler=None, bias_term=False, bias_filler=None):
    """y = x * s (+ b), s broadcast along x's axes axis .. axis + s.ndim - 1.

    s is bottom[1] when given (its shape decides; num_axes is ignored), else a
    learned blob of shape x.shape[axis : axis + num_axes] (num_axes -1: to the end)
    with ``filler`` defaulting to constant 1. With bias_term, a learned bias of the
    same shape as s follows (Caffe's inner Bias layer), filled by ``bias_filler``
    (default constant 0). Blobs: [scale, bias] or, with two bottoms, [bias]."""
    if s is None:
        if filler is None:
            filler = {"type": "constant", "value": 1.0}
        s = layer_param(_blob_shape(x, axis, num_axes, "scale_param"), filler)
    y = x * _broadcast_along(x, s, axis, "scale_param")
    if bias_term:
        b = layer_param(tuple(s.shape), bias_filler)
        y = y + _broadcast_along(x, b, axis, "scale_param")
    return y


# -------------------------------------------------------------------------- MVN

@layer("MVN")
def mvn(x, normalize_variance=True, across_channels=False, eps=1e-9):
    """y = x - mean, or with normalize_variance y = (x - mean) / (sqrt(var) + eps)
    (eps added to the standard deviation, as Caffe; var is the biased variance).
    Statistics per (n, c) over H x W, or per n over C x H x W with across_channels.

    Caffe reads the blob through its legacy num/channels/height/width view: inputs
    may have at most 4 axes and the top is reshaped to 4 axes (missing trailing
    ones become 1), so a (N, C) bottom gives an (N, C, 1, 1) top.

    Backward is the exact derivative of this forward. Caffe's hand-written backward
    drops eps from the derivative of the standard deviation, a relative difference
    of eps / std (below float32 resolution for the default eps unless std < 1e-2).
    Where a group has zero variance, the standard deviation's (infinite) derivative
    is taken as 0, which is what Caffe's formula gives there."""
    if x.ndim > 4:
        raise ShapeError(f"MVN: bottom {x.label()} has {x.ndim} axes {x.shape}; Caffe's MVN "
                         "takes at most 4 (N, C, H, W)")
    shape4 = tuple(x.shape) + (1,) * (4 - x.ndim)
    x4 = F.reshape(x, shape4)
    axes = (1, 2, 3) if across_channels else (2, 3)
    centered = x4 - F.mean(x4, axes, keepdims=True)
    if not normalize_variance:
        return centered
    var = F.mean(centered * centered, axes, keepdims=True)
    positive = F.gt(var, 0.0)
    std = F.where(positive, F.sqrt(F.where(positive, var, 1.0)), 0.0)
    return centered / (std + float(eps))


# -------------------------------------------------------------------------- LRN

@layer("LRN")
def lrn(x, local_size=5, alpha=1.0, beta=0.75, norm_region="ACROSS_CHANNELS", k=1.0):
    """Local response normalization, y = x * scale ^ -beta, on (N, C, H, W) blobs.

    ACROSS_CHANNELS: scale = k + alpha / local_size * sum of x^2 over channels
    c - (local_size-1)/2 .. c + (local_size-1)/2 (zeros beyond the edges).

    WITHIN_CHANNEL: scale = 1 + alpha * avg, avg the average of x^2 over a
    local_size x local_size window centred on each pixel. Caffe builds this from
    AVE pooling (pad (local_size-1)/2, stride 1), which divides by the window size
    clipped to the padded image, here always local_size^2, so zeros outside the
    image count; and from a Power layer with shift 1, so ``k`` is NOT used in this
    mode (Caffe ignores it; we follow)."""
    # Caffe: CHECK_EQ(size_ % 2, 1) "LRN only supports odd values for local_size".
    # size_ is an int there: a uint32 from 2^31 on is negative and refused as well
    # (-1 % 2 is 1 in Python, so the sign is checked explicitly).
    require(is_int(local_size) and 1 <= local_size < 2 ** 31 and local_size % 2 == 1,
            "lrn_param.local_size", local_size, "odd and positive (LRN only supports odd "
            "values), below 2^31")
    local_size = int(local_size)
    if x.ndim != 4:
        raise ShapeError(f"LRN: bottom {x.label()} has {x.ndim} axes {x.shape}, expected 4 "
                         "(N, C, H, W)")
    pre = (local_size - 1) // 2
    c, h, w = x.shape[1:]
    # A window reaching past every edge sums the same values as one reaching just to
    # the far edge: it is cut there (exactly), so a huge local_size loops over no huge
    # window; the divisor stays local_size.
    if norm_region == "ACROSS_CHANNELS":
        size = 2 * min(pre, c - 1) + 1
        op = LRNOp("across", size, alpha / local_size, beta, k)
    elif norm_region == "WITHIN_CHANNEL":
        # Caffe: AVE pooling of x^2 (pad (local_size-1)/2, stride 1: every window lies
        # in the padded image, so the divisor is local_size^2), then a Power layer with
        # shift 1
        size = 2 * min(pre, max(h, w) - 1) + 1
        op = LRNOp("within", size, alpha / (float(local_size) * local_size), beta, 1.0)
    else:
        require(False, "lrn_param.norm_region", norm_region,
                "ACROSS_CHANNELS or WITHIN_CHANNEL")
    return F.graph_of(x).add(op, [x])


# ------------------------------------------------------------------------ Embed

@layer("Embed")
def embed(x, num_output=None, input_dim=None, bias_term=True, weight_filler=None,
          bias_filler=None):
    """y[..., :] = W[int(x[...]), :] (+ b): one row of W per index; the top has shape
    x.shape + (num_output,). W is [input_dim, num_output] (transposed from
    InnerProduct, as Caffe), b is [num_output]. Indices are truncated to integers
    as Caffe's static_cast<int>; an index outside [0, input_dim) gives a zero row
    (Caffe leaves it undefined). Caffe refuses to back-propagate to the indices;
    here their gradient is zero."""
    # Caffe: CHECK_GT(K_, 0) "EmbedLayer input_dim must be positive";
    # CHECK_GT(N_, 0) "EmbedLayer num_output must be positive"
    require(is_int(num_output) and num_output >= 1, "embed_param.num_output", num_output,
            "a positive integer")
    require(is_int(input_dim) and input_dim >= 1, "embed_param.input_dim", input_dim,
            "a positive integer")
    num_output, input_dim = int(num_output), int(input_dim)
    w = layer_param((input_dim, num_output), weight_filler)
    m = x.size
    idx = F.broadcast_to(F.reshape(F.stop_gradient(x), (m, 1)), (m, num_output))
    y = F.gather(w, idx, 0)
    if bias_term:
        y = y + layer_param((num_output,), bias_filler)
    return F.reshape(y, tuple(x.shape) + (num_output,))
