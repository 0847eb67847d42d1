"""Convolution, Pooling and InnerProduct, with Caffe's parameters and blob layouts."""
from __future__ import annotations

import math

from .. import functions as F
from ..errors import ShapeError
from .registry import layer, layer_param
from ._util import canonical_axis, spatial


def _conv_geometry(kernel_size, kernel_h, kernel_w, stride, stride_h, stride_w, pad, pad_h,
                   pad_w, dilation):
    k = spatial("kernel", kernel_size, kernel_h, kernel_w)
    s = spatial("stride", stride, stride_h, stride_w, default=1)
    if (pad_h is None) != (pad_w is None):
        # Caffe reads pad_h() and pad_w() as soon as either is set, and both default
        # to 0 in the proto, so one of them alone is valid (the other is 0). kernel
        # and stride have no such default (Caffe rejects a 0 kernel or stride).
        pad_h, pad_w = pad_h or 0, pad_w or 0
    p = spatial("pad", pad, pad_h, pad_w, default=0)
    d = spatial("dilation", dilation, default=1)
    if min(k) < 1:
        raise ValueError(f"kernel {k}: filter dimensions must be nonzero")
    if min(s) < 1:
        raise ValueError(f"stride {s}: stride dimensions must be nonzero")
    return k, s, p, d


def _check_nchw(x, what):
    if x.ndim != 4:
        raise ShapeError(f"bottom {x.label()} has {x.ndim} axes {x.shape}, expected 4 "
                         f"(N, C, H, W) for {what}")


def _conv_layer(x, what, transpose, num_output, bias_term, geometry, group, weight_filler,
                bias_filler, axis):
    """Convolution and Deconvolution: checks, weights in Caffe's layout, bias."""
    if not num_output:
        raise ValueError("convolution_param.num_output is required")
    if axis not in (1, -3):
        raise ValueError(f"axis {axis}: only channel axis 1 of NCHW blobs is supported")
    _check_nchw(x, what)
    k, s, p, d = _conv_geometry(*geometry)
    if group < 1:
        raise ValueError(f"convolution_param.group {group}: must be >= 1")
    c = x.shape[1]
    if c % group or num_output % group:
        raise ShapeError(f"channels {c} and num_output {num_output} must be divisible by "
                         f"group {group}")
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
    _check_nchw(x, "Pooling")
    if stride is not None and (stride_h is not None or stride_w is not None):
        raise ValueError("stride is stride OR stride_h and stride_w")
    if pad is not None and (pad_h is not None or pad_w is not None):
        raise ValueError("pad is pad OR pad_h and pad_w")
    s = spatial("stride", [stride] if stride is not None else [], stride_h, stride_w,
                default=1)
    p = spatial("pad", [pad] if pad is not None else [], pad_h, pad_w, default=0)
    if global_pooling:
        if kernel_size or kernel_h or kernel_w:
            raise ValueError("with global_pooling the kernel size cannot be specified")
        if s != (1, 1) or p != (0, 0):
            raise ValueError("with global_pooling only pad = 0 and stride = 1 are allowed")
        k = x.shape[2:]
    else:
        if kernel_size is not None and (kernel_h is not None or kernel_w is not None):
            raise ValueError("kernel is kernel_size OR kernel_h and kernel_w; not both")
        k = spatial("kernel", [kernel_size] if kernel_size is not None else [], kernel_h,
                    kernel_w)
    if min(k) < 1:
        raise ValueError(f"kernel {k}: filter dimensions cannot be zero")
    if min(s) < 1:
        raise ValueError(f"stride {s} must be positive")
    if p[0] >= k[0] or p[1] >= k[1]:
        raise ValueError(f"pad {p} must be smaller than the kernel {k}")
    if pool == "STOCHASTIC":
        raise ValueError("STOCHASTIC pooling draws from Caffe's own generator and is not "
                         "supported; use MAX or AVE")
    method = {"MAX": "max", "AVE": "ave"}.get(pool)
    if method is None:
        raise ValueError(f"pool {pool!r}: expected MAX or AVE")
    return F.pool2d(x, k, s, p, method, ceil_mode=(round_mode != "FLOOR"))


@layer("InnerProduct")
def inner_product(x, num_output=None, bias_term=True, weight_filler=None, bias_filler=None,
                  axis=1, transpose=False):
    """y = x' W^T + b, with x' the blob flattened from ``axis`` on: (M, K);
    W is [num_output, K] ([K, num_output] when transpose), b is [num_output]."""
    if not num_output:
        raise ValueError("inner_product_param.num_output is required")
    axis = canonical_axis(axis, x.ndim, "InnerProduct")
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
