"""Convolution, Pooling and InnerProduct, with Caffe's parameters and blob layouts."""
from __future__ import annotations

import math

from .. import functions as F
from ..errors import ShapeError
from .registry import layer, layer_param
from ._util import canonical_axis, is_int, require, show, spatial


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


def _check_nchw(x, what):
    if x.ndim != 4:
        raise ShapeError(f"bottom {x.label()} has {x.ndim} axes {x.shape}, expected 4 "
                         f"(N, C, H, W) for {what}")


def _conv_layer(x, what, transpose, num_output, bias_term, geometry, group, weight_filler,
                bias_filler, axis):
    """Convolution and Deconvolution: checks, weights in Caffe's layout, bias."""
    # Caffe: CHECK_GT(num_output_, 0)
    require(is_int(num_output) and num_output >= 1, "convolution_param.num_output",
            num_output, "an integer >= 1 (the number of filters)")
    # Caffe takes any channel axis; symnet's convolutions are 2-D on NCHW blobs
    require(axis in (1, -3), "convolution_param.axis", axis,
            "1 (only channel axis 1 of NCHW blobs is supported)")
    _check_nchw(x, what)
    k, s, p, d = _conv_geometry(*geometry)
    # Caffe: CHECK_EQ(channels_ % group_, 0) (group 0 divides by zero there)
    require(is_int(group) and group >= 1, "convolution_param.group", group, ">= 1")
    num_output, group = int(num_output), int(group)
    c = x.shape[1]
    if c % group or num_output % group:
        raise ShapeError(f"convolution_param.group {group}: channels {c} and num_output "
                         f"{num_output} must be divisible by group {group}")
    hw = x.shape[2:]
    if transpose:
        out = [s[i] * (n - 1) + d[i] * (k[i] - 1) + 1 - 2 * p[i] for i, n in enumerate(hw)]
        # Caffe's top would have a negative size (Blob::Reshape refuses it; a 0 size
        # is an empty top, in Caffe as here)
        require(min(out) >= 0, "convolution_param.pad", list(p),
                f"small enough for a {hw[0]}x{hw[1]} bottom (kernel {k}, stride {s}, dilation "
                f"{d} give a top of {out[0]}x{out[1]})")
    else:
        ext = [d[i] * (k[i] - 1) + 1 for i in range(2)]
        # a kernel beyond the padded bottom gives Caffe a negative top size (refused)
        # or 0 (an empty top), or with a stride > 1 (rounding toward zero) even 1;
        # conv2d has always refused all of these
        padded = [hw[i] + 2 * p[i] for i in range(2)]
        require(padded[0] >= ext[0] and padded[1] >= ext[1],
                "convolution_param.kernel_size", list(k),
                f"at most the padded bottom {padded[0]}x{padded[1]} (the dilated "
                f"kernel is {ext[0]}x{ext[1]})")
    if transpose:
        w = layer_param((c, num_output // group) + k, weight_filler)
        y = F.conv_transpose2d(x, w, stride=s, pad=p, dilation=d, group=group)
    else:
        w = layer_param((num_output, c // group) + k, weight_filler)
        y = F.conv2d(x, w, stride=s, pad=p, dilation=d, group=group)
    if bias_term:
        b = layer_param((num_output,), bias_filler)
        y = y + F.reshape(b, (1, num_output, 1, 1))
    return y


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
    """MAX or AVE pooling; output size ceil((H + 2p - k) / s) + 1 (FLOOR: floor), then,
    when padding, a last window starting in the bottom/right padding is dropped (in
    both round modes, as Caffe). AVE divides by the window clipped to the padded
    image (padding counts, the part beyond it does not). A MAX tie goes to the first
    position in row-major order. global_pooling pools the whole plane.

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
    if pool == "STOCHASTIC":
        raise ValueError(f"{P}.pool 'STOCHASTIC': STOCHASTIC pooling draws from Caffe's own "
                         "generator and is not supported; use MAX or AVE")
    method = {"MAX": "max", "AVE": "ave"}.get(pool)
    require(method is not None, f"{P}.pool", pool, "MAX or AVE")
    require(round_mode in ("CEIL", "FLOOR"), f"{P}.round_mode", round_mode, "CEIL or FLOOR")
    try:
        return F.pool2d(x, k, s, p, method, ceil_mode=(round_mode != "FLOOR"))
    except ShapeError as e:
        # a window larger than the padded bottom, or one starting beyond it
        raise ShapeError(f"{P}.kernel_size {list(k)}, stride {list(s)}, pad {list(p)}: "
                         f"do not fit the bottom {x.shape}: {e}") from e


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
