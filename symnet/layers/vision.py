"""Convolution, Pooling and InnerProduct, with Caffe's parameters and blob layouts."""
from __future__ import annotations

import math

from .. import functions as F
from ..errors import GraphError, ShapeError
from ..ops.window import (PoolIndexSelect, PoolParams, MaxPoolArgmax,
                          StochasticPoolSample)
from .registry import context, layer, layer_param
from ._util import (canonical_axis, is_int, param_message, random_stream, require, show,
                    spatial)

# Caffe's FLT_MIN: STOCHASTIC pooling's TEST value starts its window sum there
FLT_MIN = 1.1754943508222875e-38


def _conv_geometry(kernel_size, kernel_h, kernel_w, stride, stride_h, stride_w, pad, pad_h,
                   pad_w, dilation):
    P = "convolution_param"
    # Caffe: CHECK_GT(kernel, 0) "Filter dimensions must be nonzero"; CHECK_GT(stride,
    # 0) "Stride dimensions must be nonzero"; pad is a uint32 (>= 0).
    k = spatial("kernel", kernel_size, kernel_h, kernel_w, param=P, list_name="kernel_size",
                minimum=1, expected="an integer >= 1 (filter dimensions must be nonzero)")
    s = spatial("stride", stride, stride_h, stride_w, default=1, param=P, minimum=1,
                expected="an integer >= 1 (stride dimensions must be nonzero)")
    if (pad_h is None) != (pad_w is None):
        # Caffe reads pad_h() and pad_w() as soon as either is set, and both default
        # to 0 in the proto, so one of them alone is valid (the other is 0). kernel
        # and stride have no such default (Caffe rejects a 0 kernel or stride).
        pad_h, pad_w = pad_h or 0, pad_w or 0
    p = spatial("pad", pad, pad_h, pad_w, default=0, param=P, minimum=0)
    # Caffe does not check dilation (a uint32), but a dilation of 0 puts every tap of
    # the kernel on one pixel: a degenerate convolution that conv2d refuses anyway.
    d = spatial("dilation", dilation, default=1, param=P, minimum=1)
    return k, s, p, d


def _nd_values(name, values, h, w, nsp, default=None, minimum=1, expected=None):
    """Caffe's N-D spelling of a convolution size: the repeated field given once or
    once per spatial axis (``name``_h/_w are for 2-D convolutions only). Returns a
    tuple of nsp ints."""
    P = "convolution_param"
    list_name = "kernel_size" if name == "kernel" else name
    for field, v in ((f"{name}_h", h), (f"{name}_w", w)):
        if v is not None:
            # Caffe: CHECK_EQ(num_spatial_axes_, 2) "kernel_h & kernel_w can only be
            # used for 2D convolution." (likewise stride and pad)
            raise ValueError(param_message(
                f"{P}.{field}", v, f"unset for a {nsp}-D convolution ({name}_h and "
                f"{name}_w can only be used for 2-D convolution; use {list_name})"))
    values = list(values or [])
    if not values:
        if default is None:
            raise ValueError(f"{P}.{list_name} (not set): must be given")
        values = [default]
    # Caffe: CHECK(num_kernel_dims == 1 || num_kernel_dims == num_spatial_axes_)
    if len(values) not in (1, nsp):
        raise ValueError(f"{P}.{list_name} {show(values)}: has {len(values)} values; a "
                         f"{nsp}-D convolution takes 1 or {nsp}")
    shown = values[0] if len(values) == 1 else values
    require(all(is_int(v) and v >= minimum for v in values), f"{P}.{list_name}", shown,
            expected or f"an integer >= {minimum}")
    return tuple(int(v) for v in (values * nsp if len(values) == 1 else values))


def _nd_geometry(nsp, kernel_size, kernel_h, kernel_w, stride, stride_h, stride_w, pad,
                 pad_h, pad_w, dilation):
    k = _nd_values("kernel", kernel_size, kernel_h, kernel_w, nsp,
                   expected="an integer >= 1 (filter dimensions must be nonzero)")
    s = _nd_values("stride", stride, stride_h, stride_w, nsp, default=1,
                   expected="an integer >= 1 (stride dimensions must be nonzero)")
    p = _nd_values("pad", pad, pad_h, pad_w, nsp, default=0, minimum=0)
    d = _nd_values("dilation", dilation, None, None, nsp, default=1)
    return k, s, p, d


def _check_nchw(x, what):
    if x.ndim != 4:
        raise ShapeError(f"bottom {x.label()} has {x.ndim} axes {x.shape}, expected 4 "
                         f"(N, C, H, W) for {what}")


def _conv3d(x, w, s, p, d, group):
    """A 3-D convolution of x (B, C, D, H, W) with w (O, C/group, kd, kh, kw) as the sum
    over the kernel's depth taps of 2-D convolutions of depth slices folded into the
    batch: y[:, :, z] = sum_a conv2d(x_padded[:, :, z * sd + a * dd], w[:, :, a])."""
    B, C, D, H, W = x.shape
    O, _, kd = w.shape[:3]
    od = (D + 2 * p[0] - (d[0] * (kd - 1) + 1)) // s[0] + 1
    xt = F.transpose(x, (0, 2, 1, 3, 4))                    # B, D, C, H, W
    if p[0]:
        xt = F.pad(xt, [(0, 0), (p[0], p[0]), (0, 0), (0, 0), (0, 0)])
    total = None
    for a in range(kd):
        start = a * d[0]
        xs = F.getitem(xt, (slice(None), slice(start, start + (od - 1) * s[0] + 1, s[0])))
        xs = F.reshape(xs, (B * od, C, H, W))
        ya = F.conv2d(xs, F.getitem(w, (slice(None), slice(None), a)), stride=s[1:],
                      pad=p[1:], dilation=d[1:], group=group)
        total = ya if total is None else total + ya
    oh, ow = total.shape[2:]
    return F.transpose(F.reshape(total, (B, od, O, oh, ow)), (0, 2, 1, 3, 4))


def _deconv3d(x, w, s, p, d, group):
    """The transpose of _conv3d: x (B, C, D, H, W), w (C, O/group, kd, kh, kw). Each
    depth tap a is a 2-D transposed convolution of the depth slices folded into the
    batch, placed at depths z * sd + a * dd of the full output, which is then cropped
    by the depth padding."""
    B, C, D, H, W = x.shape
    kd = w.shape[2]
    full = s[0] * (D - 1) + d[0] * (kd - 1) + 1
    span = (D - 1) * s[0] + 1
    xt = F.reshape(F.transpose(x, (0, 2, 1, 3, 4)), (B * D, C, H, W))
    total = None
    for a in range(kd):
        ta = F.conv_transpose2d(xt, F.getitem(w, (slice(None), slice(None), a)),
                                stride=s[1:], pad=p[1:], dilation=d[1:], group=group)
        O, ho, wo = ta.shape[1:]
        plane = O * ho * wo
        if s[0] > 1:
            ta = F.pad(F.reshape(ta, (B, D, 1, plane)), [(0, 0), (0, 0), (0, s[0] - 1), (0, 0)])
            ta = F.getitem(F.reshape(ta, (B, D * s[0], plane)), (slice(None), slice(0, span)))
        else:
            ta = F.reshape(ta, (B, D, plane))
        ta = F.pad(ta, [(0, 0), (a * d[0], full - a * d[0] - span), (0, 0)])
        total = ta if total is None else total + ta
    out = full - 2 * p[0]
    total = F.getitem(total, (slice(None), slice(p[0], p[0] + out)))
    return F.transpose(F.reshape(total, (B, out, O, ho, wo)), (0, 2, 1, 3, 4))


def _conv_layer(x, what, transpose, num_output, bias_term, geometry, group, weight_filler,
                bias_filler, axis):
    """Convolution and Deconvolution: checks, weights in Caffe's layout, bias.

    Caffe's N-D rules: ``axis`` is the channel axis (axes before it are batch-like and
    are folded into one), every axis after it is spatial; 1, 2 or 3 spatial axes.
    Weights are [num_output, C/group, *kernel] ([C, num_output/group, *kernel] for
    Deconvolution)."""
    # Caffe: CHECK_GT(num_output_, 0)
    require(is_int(num_output) and num_output >= 1, "convolution_param.num_output",
            num_output, "an integer >= 1 (the number of filters)")
    # Caffe: channel_axis_ = CanonicalAxisIndex(axis), num_spatial_axes_ the axes after
    given_axis = axis
    axis = canonical_axis(axis, x.ndim, "convolution_param.axis")
    nsp = x.ndim - axis - 1
    if not 1 <= nsp <= 3:
        raise ShapeError(f"convolution_param.axis {given_axis}: bottom {x.label()} of shape "
                         f"{x.shape} has {nsp} spatial axes after channel axis {axis}; "
                         f"{what} takes 1, 2 or 3")
    if nsp == 2:
        k, s, p, d = _conv_geometry(*geometry)
    else:
        k, s, p, d = _nd_geometry(nsp, *geometry)
    # Caffe: CHECK_EQ(channels_ % group_, 0) (group 0 divides by zero there)
    require(is_int(group) and group >= 1, "convolution_param.group", group, ">= 1")
    num_output, group = int(num_output), int(group)
    lead, c, hw = x.shape[:axis], x.shape[axis], x.shape[axis + 1:]
    if c % group or num_output % group:
        raise ShapeError(f"convolution_param.group {group}: channels {c} and num_output "
                         f"{num_output} must be divisible by group {group}")
    sizes = "x".join(str(n) for n in hw)
    if transpose:
        out = [s[i] * (n - 1) + d[i] * (k[i] - 1) + 1 - 2 * p[i] for i, n in enumerate(hw)]
        # Caffe's top would have a negative size (Blob::Reshape refuses it; a 0 size
        # is an empty top, in Caffe as here)
        require(min(out) >= 0, "convolution_param.pad", list(p),
                f"small enough for a {sizes} bottom (kernel {k}, stride {s}, dilation "
                f"{d} give a top of {'x'.join(str(o) for o in out)})")
    else:
        ext = [d[i] * (k[i] - 1) + 1 for i in range(nsp)]
        # a kernel beyond the padded bottom gives Caffe a negative top size (refused)
        # or 0 (an empty top), or with a stride > 1 (rounding toward zero) even 1;
        # conv2d has always refused all of these
        padded = [hw[i] + 2 * p[i] for i in range(nsp)]
        require(all(padded[i] >= ext[i] for i in range(nsp)),
                "convolution_param.kernel_size", list(k),
                f"at most the padded bottom {'x'.join(str(n) for n in padded)} (the dilated "
                f"kernel is {'x'.join(str(e) for e in ext)})")
    xb = F.reshape(x, (math.prod(lead), c) + hw)
    if transpose:
        w = layer_param((c, num_output // group) + k, weight_filler)
    else:
        w = layer_param((num_output, c // group) + k, weight_filler)
    if nsp == 2:
        conv = F.conv_transpose2d if transpose else F.conv2d
        y = conv(xb, w, stride=s, pad=p, dilation=d, group=group)
    elif nsp == 1:
        # a 2-D convolution of height 1
        x4 = F.reshape(xb, xb.shape[:2] + (1, hw[0]))
        w4 = F.reshape(w, w.shape[:2] + (1, k[0]))
        conv = F.conv_transpose2d if transpose else F.conv2d
        y = conv(x4, w4, stride=(1, s[0]), pad=(0, p[0]), dilation=(1, d[0]), group=group)
        y = F.reshape(y, y.shape[:2] + (y.shape[3],))
    else:
        y = (_deconv3d if transpose else _conv3d)(xb, w, s, p, d, group)
    if bias_term:
        b = layer_param((num_output,), bias_filler)
        y = y + F.reshape(b, (1, num_output) + (1,) * nsp)
    return F.reshape(y, lead + y.shape[1:])


@layer("Convolution")
def convolution(x, num_output=None, bias_term=True, kernel_size=(), kernel_h=None,
                kernel_w=None, stride=(), stride_h=None, stride_w=None, pad=(), pad_h=None,
                pad_w=None, dilation=(), group=1, weight_filler=None, bias_filler=None,
                axis=1):
    """y = conv2d(x, W; stride, pad, dilation, group) + b[c];
    W is [num_output, C/group, kh, kw], b is [num_output]."""
    return _conv_layer(x, "Convolution", False, num_output, bias_term,
                       (kernel_size, kernel_h, kernel_w, stride, stride_h, stride_w, pad,
                        pad_h, pad_w, dilation), group, weight_filler, bias_filler, axis)


@layer("Deconvolution", params="convolution_param")
def deconvolution(x, num_output=None, bias_term=True, kernel_size=(), kernel_h=None,
                  kernel_w=None, stride=(), stride_h=None, stride_w=None, pad=(), pad_h=None,
                  pad_w=None, dilation=(), group=1, weight_filler=None, bias_filler=None,
                  axis=1):
    """y = conv_transpose2d(x, W) + b; W is [C, num_output/group, kh, kw]; output size
    (H - 1) * stride - 2 * pad + dilation * (kernel - 1) + 1."""
    return _conv_layer(x, "Deconvolution", True, num_output, bias_term,
                       (kernel_size, kernel_h, kernel_w, stride, stride_h, stride_w, pad,
                        pad_h, pad_w, dilation), group, weight_filler, bias_filler, axis)


@layer("Pooling")
def pooling(x, pool="MAX", kernel_size=None, kernel_h=None, kernel_w=None, stride=None,
            stride_h=None, stride_w=None, pad=None, pad_h=None, pad_w=None,
            global_pooling=False, round_mode="CEIL"):
    """MAX, AVE or STOCHASTIC pooling; output size ceil((H + 2p - k) / s) + 1 (FLOOR:
    floor), then, when padding, a last window starting in the bottom/right padding is dropped (in
    both round modes, as Caffe). AVE divides by the window clipped to the padded
    image (padding counts, the part beyond it does not). A MAX tie goes to the first
    position in row-major order. global_pooling pools the whole plane. With two tops
    (MAX only), the second is Caffe's mask: the flat position h * W + w of each
    window's first maximum, as a float (no gradient). STOCHASTIC: see _stochastic_pool.

    stride and pad default to 1 and 0 (Caffe's proto defaults); kernel_size or both
    kernel_h and kernel_w, pad or both pad_h and pad_w, stride or both stride_h and
    stride_w."""
    P = "pooling_param"
    _check_nchw(x, "Pooling")
    if stride is not None and (stride_h is not None or stride_w is not None):
        raise ValueError(f"{P}.stride {show(stride)}: stride is stride OR stride_h and "
                         "stride_w")
    if pad is not None and (pad_h is not None or pad_w is not None):
        raise ValueError(f"{P}.pad {show(pad)}: pad is pad OR pad_h and pad_w")
    # Caffe does not check the stride, but divides by it (a 0 stride is SIGFPE there)
    s = spatial("stride", [stride] if stride is not None else [], stride_h, stride_w,
                default=1, param=P, minimum=1)
    p = spatial("pad", [pad] if pad is not None else [], pad_h, pad_w, default=0, param=P,
                minimum=0)
    if global_pooling:
        # Caffe: CHECK(!(has_kernel_size() || has_kernel_h() || has_kernel_w())), so
        # an explicit 0 is refused as well
        given = [(f, v) for f, v in (("kernel_size", kernel_size), ("kernel_h", kernel_h),
                                      ("kernel_w", kernel_w)) if v is not None]
        if given:
            raise ValueError(f"{P}.{given[0][0]} {show(given[0][1])}: with global_pooling "
                             "the kernel size cannot be specified")
        # Caffe: CHECK(pad_h_ == 0 && pad_w_ == 0 && stride_h_ == 1 && stride_w_ == 1)
        why = "(with global_pooling only pad = 0 and stride = 1 are allowed)"
        require(s == (1, 1), f"{P}.stride", list(s), f"1 {why}")
        require(p == (0, 0), f"{P}.pad", list(p), f"0 {why}")
        k = x.shape[2:]
    else:
        if kernel_size is not None and (kernel_h is not None or kernel_w is not None):
            raise ValueError(f"{P}.kernel_size {show(kernel_size)}: kernel is kernel_size "
                             "OR kernel_h and kernel_w; not both")
        # Caffe: CHECK_GT(kernel_h_, 0) "Filter dimensions cannot be zero."
        k = spatial("kernel", [kernel_size] if kernel_size is not None else [], kernel_h,
                    kernel_w, param=P, list_name="kernel_size", minimum=1,
                    expected="an integer >= 1 (filter dimensions cannot be zero)")
    # Caffe: CHECK_LT(pad_h_, kernel_h_), CHECK_LT(pad_w_, kernel_w_)
    require(p[0] < k[0] and p[1] < k[1], f"{P}.pad", list(p),
            f"smaller than the kernel {k}")
    method = {"MAX": "max", "AVE": "ave", "STOCHASTIC": "stochastic"}.get(pool)
    require(method is not None, f"{P}.pool", pool, "MAX, AVE or STOCHASTIC")
    require(round_mode in ("CEIL", "FLOOR"), f"{P}.round_mode", round_mode, "CEIL or FLOOR")
    ctx = context() if _in_layer() else None
    ntop = ctx.ntop if ctx is not None else 1
    # Caffe: MaxTopBlobs() is 2 for MAX (the second top is the argmax mask), else 1
    if ntop > (2 if method == "max" else 1):
        raise ValueError(f"{P}.pool {show(pool)}: with {ntop} tops: must be MAX (only MAX "
                         "pooling has a second top, the argmax mask) and at most 2 tops")
    ceil_mode = round_mode != "FLOOR"
    if method == "stochastic":
        # Caffe: "Padding implemented only for average and max pooling."
        require(p == (0, 0), f"{P}.pad", list(p), "0 for STOCHASTIC pooling (padding is "
                "implemented only for average and max pooling)")
        return _stochastic_pool(x, k, s, ceil_mode, ctx)
    try:
        y = F.pool2d(x, k, s, p, method, ceil_mode=ceil_mode)
    except ShapeError as e:
        # a window larger than the padded bottom, or one starting beyond it
        raise ShapeError(f"{P}.kernel_size {list(k)}, stride {list(s)}, pad {list(p)}: "
                         f"do not fit the bottom {x.shape}: {e}") from e
    if ntop == 2:
        mask = x.graph.add(MaxPoolArgmax(PoolParams(k, s, p, ceil_mode)), [x])
        return y, mask
    return y


def _in_layer():
    try:
        context()
    except GraphError:
        return False
    return True


def _stochastic_pool(x, k, s, ceil_mode, ctx):
    """Caffe's STOCHASTIC pooling (GPU only in Caffe; its kernels StoPoolForwardTrain,
    StoPoolForwardTest, StoPoolBackward). Windows start at i * stride and are clipped to
    the bottom. TRAIN: each window takes one element drawn with probability
    proportional to its value (the draw of StochasticPoolSample, uniforms from
    symnet's Philox generator seeded as Dropout: the layer's name and the iteration);
    the gradient goes to the drawn element. TEST: sum(x^2) / (FLT_MIN + sum(x)) per
    window (0 for a window of zeros), with its derived gradient (Caffe's TEST backward
    reads draws no TEST forward made)."""
    P = "pooling_param"
    N, C, H, W = x.shape
    params = PoolParams(k, s, 0, ceil_mode)
    oh, ow = params.out_len(H, 0), params.out_len(W, 1)
    for axis, (n, o) in enumerate(((H, oh), (W, ow))):
        # Caffe's top would be empty or negative, or a last window would start beyond
        # the bottom (Caffe leaves that top value unwritten)
        if o < 1 or (o - 1) * s[axis] >= n:
            raise ShapeError(f"{P}.kernel_size {list(k)}, stride {list(s)}: do not fit the "
                             f"bottom {x.shape} (every STOCHASTIC window must overlap it)")
    # zeros below and right make every window whole: they change neither the sums nor
    # the draw (a running sum reaches its threshold at an element of the bottom)
    hp, wp = (oh - 1) * s[0] + k[0], (ow - 1) * s[1] + k[1]
    xp = x
    if hp > H or wp > W:
        xp = F.pad(xp, [(0, 0), (0, 0), (0, max(hp - H, 0)), (0, max(wp - W, 0))])
    if hp < H or wp < W:
        xp = F.getitem(xp, (slice(None), slice(None), slice(0, hp), slice(0, wp)))
    whole = PoolParams(k, s, 0, ceil_mode=False)
    if ctx is not None and ctx.phase == "TRAIN":
        seed = random_stream(ctx.name)
        u = F.uniform((N, C, oh, ow), seed=seed, counter=ctx.counter)
        idx = x.graph.add(StochasticPoolSample(whole), [xp, u])
        return x.graph.add(PoolIndexSelect(whole), [idx, xp])
    area = float(k[0] * k[1])
    s1 = F.pool2d(xp, k, s, 0, "ave", ceil_mode=False) * area
    s2 = F.pool2d(xp * xp, k, s, 0, "ave", ceil_mode=False) * area
    return s2 / (s1 + FLT_MIN)


@layer("InnerProduct")
def inner_product(x, num_output=None, bias_term=True, weight_filler=None, bias_filler=None,
                  axis=1, transpose=False):
    """y = x' W^T + b, with x' the blob flattened from ``axis`` on: (M, K);
    W is [num_output, K] ([K, num_output] when transpose), b is [num_output]."""
    # Caffe does not check num_output (a uint32; 0 makes an empty top); symnet has
    # always refused 0
    require(is_int(num_output) and num_output >= 1, "inner_product_param.num_output",
            num_output, "an integer >= 1")
    num_output = int(num_output)
    axis = canonical_axis(axis, x.ndim, "inner_product_param.axis")
    m, kdim = math.prod(x.shape[:axis]), math.prod(x.shape[axis:])
    flat = F.reshape(x, (m, kdim))
    if transpose:
        w = layer_param((kdim, num_output), weight_filler)
        y = F.matmul(flat, w)
    else:
        w = layer_param((num_output, kdim), weight_filler)
        y = F.matmul(flat, F.transpose(w))
    if bias_term:
        y = y + layer_param((num_output,), bias_filler)
    return F.reshape(y, x.shape[:axis] + (num_output,))
