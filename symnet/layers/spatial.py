"""Caffe's SPP (spatial pyramid pooling) and Im2col layers. SPP is composed of symnet's
pooling, reshape and concat ops, its backward derived (the pooling gradients summed
into the bottom). Im2col with 1 or 2 spatial axes is the Im2col op (its backward the
Col2im op: each column entry added back to the pixel it was copied from, taps in
(ki, kj) order); with 3 or more it is composed of pad, strided slices and concat, its
backward derived (the same sums, possibly in another order)."""
from __future__ import annotations

import itertools
import math

from .. import functions as F
from .. import ops
from ..errors import ShapeError
from ._util import canonical_axis, is_int, require
from .registry import layer


# ----------------------------------------------------------------------- SPP

def spp_geometry(level, h, w):
    """Caffe's SPPLayer::GetPoolingParam for pyramid level ``level`` of an h x w bottom:
    (kernel, stride, pad), each an (h, w) pair. 2**level bins per side: kernel =
    ceil(size / bins), pad = (kernel * bins - size + 1) // 2, stride = kernel."""
    bins = 2 ** level
    kernel, pad = [], []
    for size in (h, w):
        k = -(-size // bins)
        kernel.append(k)
        pad.append((k * bins - size + 1) // 2)
    return tuple(kernel), tuple(kernel), tuple(pad)


@layer("SPP")
def spp(x, pyramid_height=None, pool="MAX", engine=None):
    """Spatial pyramid pooling: for each level l < pyramid_height, Caffe's Pooling
    with 2**l bins per side (kernel ceil(H / 2**l), stride = kernel, pad
    (kernel * 2**l - H + 1) // 2, likewise for W; Caffe's ceil rounding and
    dropped-last-window rule), each flattened to (N, C*oh*ow) and concatenated in
    level order: (N, C * sum_l oh_l*ow_l). With pyramid_height 1 the top is the one
    pooling's (N, C, oh, ow), not flattened, as Caffe. The geometry follows the
    bottom's size when the net is re-sized."""
    P = "spp_param"
    # Caffe: CHECK_EQ(4, bottom[0]->num_axes()) "Input must have 4 axes"
    if x.ndim != 4:
        raise ShapeError(f"SPP: bottom {x.label()} has {x.ndim} axes {x.shape}; input must "
                         "have 4 axes, corresponding to (num, channels, height, width)")
    # pyramid_height is a uint32 without default; 0 levels would leave Caffe's Concat
    # without bottoms
    require(pyramid_height is not None and is_int(pyramid_height) and pyramid_height >= 1,
            f"{P}.pyramid_height", pyramid_height, "an integer >= 1 (the number of levels)")
    if pool == "STOCHASTIC":
        raise ValueError(f"{P}.pool 'STOCHASTIC': STOCHASTIC pooling draws from Caffe's own "
                         "generator and is not supported; use MAX or AVE")
    method = {"MAX": "max", "AVE": "ave"}.get(pool)
    require(method is not None, f"{P}.pool", pool, "MAX or AVE")
    h, w = x.shape[2:]
    # Caffe: CHECK_GT(bottom_h_, 0) "Input dimensions cannot be zero."
    if h < 1 or w < 1:
        raise ShapeError(f"SPP: bottom {x.shape}: input dimensions cannot be zero")
    levels = []
    for level in range(int(pyramid_height)):
        k, s, p = spp_geometry(level, h, w)
        # Caffe's PoolingLayer: CHECK_LT(pad_h_, kernel_h_), CHECK_LT(pad_w_, kernel_w_)
        require(p[0] < k[0] and p[1] < k[1], f"{P}.pyramid_height", pyramid_height,
                f"at most {level} for a {h}x{w} bottom: level {level} ({2 ** level} bins "
                f"per side) needs pad {list(p)} with kernel {list(k)}, and Caffe's pooling "
                "requires pad < kernel")
        levels.append(F.pool2d(x, k, s, p, method, ceil_mode=True))
    if len(levels) == 1:
        return levels[0]
    n = x.shape[0]
    return F.concat([F.reshape(y, (n, math.prod(y.shape[1:]))) for y in levels], 1)


# -------------------------------------------------------------------- Im2col

def _nd(name, values, h, w, nsp, default, P, minimum, why=""):
    """A convolution_param size for ``nsp`` spatial axes, as Caffe reads it: the _h/_w
    pair (2-D only, not with the repeated field), or the repeated field given once or
    once per spatial axis (empty: ``default``)."""
    values = list(values or [])
    if h is not None or w is not None:
        # Caffe: CHECK_EQ(num_spatial_axes_, 2) "kernel_h & kernel_w can only be used
        # for 2D convolution."; CHECK_EQ(0, kernel_size_size()) "Either ... not both."
        require(nsp == 2, f"{P}.{name}_h", h, f"not used: {name}_h & {name}_w can only be used "
                f"for 2D convolution ({nsp} spatial axes here)")
        require(not values, f"{P}.{name if name != 'kernel' else 'kernel_size'}", values,
                f"empty: either it or {name}_h/{name}_w should be specified; not both")
        out = [0 if h is None else h, 0 if w is None else w]
        fields = [f"{P}.{name}_h", f"{P}.{name}_w"]
    else:
        field = f"{P}.{'kernel_size' if name == 'kernel' else name}"
        require(len(values) in ((1, nsp) if default is None else (0, 1, nsp)), field,
                values if len(values) != 1 else values[0],
                f"given once, or once per spatial dimension ({nsp})")
        out = [default] * nsp if not values else \
            [values[0]] * nsp if len(values) == 1 else values
        fields = [field] * nsp
    for f, v in zip(fields, out):
        require(is_int(v) and v >= minimum, f, v, f"an integer >= {minimum}{why}")
    return [int(v) for v in out]


@layer("Im2col", params="convolution_param")
def im2col(x, kernel_size=(), kernel_h=None, kernel_w=None, stride=(), stride_h=None,
           stride_w=None, pad=(), pad_h=None, pad_w=None, dilation=(), axis=1,
           force_nd_im2col=False, **_ignored):
    """The columns a convolution would multiply: for each item (the axes before
    ``axis``) and each channel c, kernel offset (i, j, ...) in row-major order, the
    top channel c * prod(kernel) + offset holds the bottom pixels that offset reads at
    each output position (zero where the window lies in the padding). The top is
    (N, C * kh * kw, oh, ow) for a 2-D bottom (N, C, H, W): Caffe's channel-major
    layout; o = (size + 2 * pad - (dilation * (kernel - 1) + 1)) / stride + 1 (C's
    integer division). Any number of spatial axes (those after ``axis``). The
    backward is col2im: each column entry's diff is added to its pixel (1 or 2 spatial
    axes: the Col2im op, each pixel summing its taps in (ki, kj) order from 0)."""
    P = "convolution_param"
    cax = canonical_axis(axis, x.ndim, f"{P}.axis")
    nsp = x.ndim - cax - 1
    # Caffe: CHECK_GE(num_spatial_axes_, 1)
    require(nsp >= 1, f"{P}.axis", axis, f"followed by at least one spatial axis in the "
            f"{x.ndim}-d bottom {x.shape}", ShapeError)
    k = _nd("kernel", kernel_size, kernel_h, kernel_w, nsp, None, P, 1,
            " (filter dimensions must be nonzero)")
    s = _nd("stride", stride, stride_h, stride_w, nsp, 1, P, 1,
            " (stride dimensions must be nonzero)")
    p = _nd("pad", pad, pad_h, pad_w, nsp, 0, P, 0)
    d = _nd("dilation", dilation, None, None, nsp, 1, P, 1)
    size = x.shape[cax + 1:]
    ext = [dd * (kk - 1) + 1 for dd, kk in zip(d, k)]
    out = []
    for i in range(nsp):
        num = size[i] + 2 * p[i] - ext[i]
        o = (num // s[i] if num >= 0 else -(-num // s[i])) + 1    # C truncates toward 0
        # Caffe makes an empty top for 0 and refuses a negative size; symnet has no
        # empty blobs
        require(o >= 1, f"{P}.kernel_size", k if nsp > 1 else k[0],
                f"at most the padded bottom on spatial axis {i} ({size[i]} + 2 * "
                f"{p[i]} pad; the dilated kernel is {ext[i]}): the top would have size {o}",
                ShapeError)
        out.append(o)
    outer, c = math.prod(x.shape[:cax]), x.shape[cax]
    if nsp <= 2:
        # the Im2col op (a copy kernel; its vjp is the Col2im op); 1-D as a height-1 image
        one = 2 - nsp
        x4 = F.reshape(x, (outer, c) + (1,) * one + tuple(size))
        im2col_op = ops.Im2col([1] * one + k, [1] * one + s, [0] * one + p, [1] * one + d)
        y = x4.graph.add(im2col_op, [x4])
        return F.reshape(y, x.shape[:cax] + (c * math.prod(k),) + tuple(out))
    # 3 or more spatial axes: zero padding, a strided slice per kernel offset, concat
    x3 = F.reshape(x, (outer, c) + tuple(size))
    # zeros before each axis (pad) and after it (pad, or more where C's truncation
    # lets the last window run past the padded bottom: Caffe's im2col reads 0 there)
    after = [max(p[i], (out[i] - 1) * s[i] + ext[i] - size[i] - p[i]) for i in range(nsp)]
    if any(p) or any(after):
        x3 = F.pad(x3, [(0, 0), (0, 0)] + [(p[i], after[i]) for i in range(nsp)])
    taps = math.prod(k)
    positions = math.prod(out)
    cols = []
    for offset in itertools.product(*[range(kk) for kk in k]):
        index = [slice(None), slice(None)]
        for i, o in enumerate(offset):
            start = o * d[i]
            index.append(slice(start, start + (out[i] - 1) * s[i] + 1, s[i]))
        piece = x3[tuple(index)]
        cols.append(F.reshape(piece, (outer, c, 1, positions)))
    y = cols[0] if taps == 1 else F.concat(cols, 2)
    return F.reshape(y, x.shape[:cax] + (c * taps,) + tuple(out))
