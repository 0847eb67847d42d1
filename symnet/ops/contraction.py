"""Contractions and windows: matmul, 2-D convolution and its transposes, pooling and
the windowed sum along one axis (from which LRN is built), and Caffe's im2col and
col2im as ops of their own (the Im2col layer).

Convolution weights have Caffe's layout: Conv2d ``[out, in/group, kh, kw]``,
ConvTranspose2d ``[in, out/group, kh, kw]`` (the same tensor as the convolution it
transposes). The convolution family is closed under vjp: Conv2d, ConvTranspose2d and
ConvWeightGrad are each other's adjoints, so gradients of any order exist.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .base import Op


def _pair(v, name):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class MatMul(Op):
    """(..., m, k) @ (..., k, n) with NumPy's broadcasting of the batch axes."""
    kind = "matmul"
    nargs = 2

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        a, b = shapes
        if len(a) < 2 or len(b) < 2:
            raise self.shape_error(shapes, "(..., m, k) and (..., k, n), both at least 2-d")
        if a[-1] != b[-2]:
            raise self.shape_error(shapes, f"(..., m, k) and (..., k, n) with equal k, but "
                                   f"k is {a[-1]} on the left and {b[-2]} on the right")
        try:
            batch = np.broadcast_shapes(a[:-2], b[:-2])
        except ValueError:
            raise self.shape_error(shapes, "batch axes that broadcast") from None
        return tuple(batch) + (a[-2], b[-1])

    def vjp(self, args, out, g):
        from .. import functions as F
        a, b = args
        da = F.sum_to_shape(F.matmul(g, F.swap_last(b)), a.shape)
        db = F.sum_to_shape(F.matmul(F.swap_last(a), g), b.shape)
        return [da, db]

    def reference(self, arrays, shape):
        return np.matmul(arrays[0], arrays[1])


class ConvParams:
    """stride, pad, dilation and group shared by the convolution ops."""

    def __init__(self, stride=1, pad=0, dilation=1, group=1):
        self.stride = _pair(stride, "stride")
        self.pad = _pair(pad, "pad")
        self.dilation = _pair(dilation, "dilation")
        self.group = int(group)
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.pad) < 0 or self.group < 1:
            raise ValueError(f"convolution: stride {self.stride} and dilation {self.dilation} "
                             f"must be >= 1, pad {self.pad} >= 0, group {self.group} >= 1")

    def as_dict(self):
        return {"stride": self.stride, "pad": self.pad, "dilation": self.dilation,
                "group": self.group}

    def out_size(self, hw, khw):
        return tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1
                     for n, k, s, p, d in zip(hw, khw, self.stride, self.pad, self.dilation))

    def windows(self, x, khw, out_hw):
        """View (N, C, oh, ow, kh, kw) of x padded, one window per output position."""
        (ph, pw), (sh, sw), (dh, dw) = self.pad, self.stride, self.dilation
        xp = np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))))
        n, c, _, _ = xp.shape
        s0, s1, s2, s3 = xp.strides
        return as_strided(xp, (n, c, out_hw[0], out_hw[1], khw[0], khw[1]),
                          (s0, s1, s2 * sh, s3 * sw, s2 * dh, s3 * dw), writeable=False)


class _ConvBase(Op):
    nargs = 2

    def __init__(self, params: ConvParams):
        self.p = params

    def attrs(self):
        return self.p.as_dict()

    def _check4(self, shapes):
        self.check_arity(shapes)
        if any(len(s) != 4 for s in shapes):
            raise self.shape_error(shapes, "4-d tensors (N, C, H, W) and weights "
                                   "(out, in/group, kh, kw)")


class Conv2d(_ConvBase):
    """y[n, o] = sum_c,i,j w[o, c, i, j] x[n, g*C/G + c, y*s - p + i*d, x*s - p + j*d]."""
    kind = "conv2d"

    def infer_shape(self, shapes):
        self._check4(shapes)
        (n, c, h, w), (o, cg, kh, kw) = shapes
        g = self.p.group
        if c % g or o % g or cg != c // g:
            raise self.shape_error(shapes, f"input channels {c} and outputs {o} divisible by "
                                   f"group {g}, weights of shape ({o}, {c // g}, kh, kw)")
        oh, ow = self.p.out_size((h, w), (kh, kw))
        if oh < 1 or ow < 1:
            raise self.shape_error(shapes, "an input at least as large as the dilated kernel")
        return (n, o, oh, ow)

    def vjp(self, args, out, g):
        from .. import functions as F
        x, w = args
        gr = F.graph_of(g)
        dx = gr.add(ConvTranspose2d(self.p, x.shape[2:]), [g, w])
        dw = gr.add(ConvWeightGrad(self.p, w.shape[2:]), [x, g])
        return [dx, dw]

    def reference(self, arrays, shape):
        x, w = arrays
        n, c = x.shape[:2]
        o, cg, kh, kw = w.shape
        g = self.p.group
        win = self.p.windows(x, (kh, kw), shape[2:])
        win = win.reshape(n, g, cg, shape[2], shape[3], kh, kw)
        wg = w.reshape(g, o // g, cg, kh, kw)
        y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
        return y.reshape(shape)


class ConvTranspose2d(_ConvBase):
    """The adjoint of Conv2d in its input: the data gradient, Caffe's Deconvolution."""
    kind = "conv_transpose2d"

    def __init__(self, params: ConvParams, out_hw):
        super().__init__(params)
        self.out_hw = tuple(int(v) for v in out_hw)

    def attrs(self):
        return dict(self.p.as_dict(), out_hw=self.out_hw)

    def infer_shape(self, shapes):
        self._check4(shapes)
        (n, ci, h, w), (wi, og, kh, kw) = shapes
        g = self.p.group
        if ci != wi or ci % g:
            raise self.shape_error(shapes, f"weights ({ci}, out/group, kh, kw) with {ci} "
                                   f"divisible by group {g}")
        if self.p.out_size(self.out_hw, (kh, kw)) != (h, w):
            raise self.shape_error(shapes, f"an input whose convolution size from "
                                   f"{self.out_hw} is ({h}, {w})")
        return (n, og * g) + self.out_hw

    def vjp(self, args, out, g):
        from .. import functions as F
        x, w = args
        gr = F.graph_of(g)
        dx = gr.add(Conv2d(self.p), [g, w])
        dw = gr.add(ConvWeightGrad(self.p, w.shape[2:]), [g, x])
        return [dx, dw]

    def reference(self, arrays, shape):
        x, w = arrays
        n, ci, h, wd = x.shape
        _, og, kh, kw = w.shape
        g = self.p.group
        (sh, sw), (ph, pw), (dh, dw) = self.p.stride, self.p.pad, self.p.dilation
        big_h = max((h - 1) * sh + dh * (kh - 1) + 1, shape[2] + 2 * ph)
        big_w = max((wd - 1) * sw + dw * (kw - 1) + 1, shape[3] + 2 * pw)
        full = np.zeros((n, g, og, big_h, big_w), dtype=x.dtype)
        xg = x.reshape(n, g, ci // g, h, wd)
        wg = w.reshape(g, ci // g, og, kh, kw)
        for i in range(kh):
            for j in range(kw):
                part = np.einsum("ngchw,gco->ngohw", xg, wg[..., i, j], optimize=True)
                full[:, :, :, i * dh: i * dh + sh * (h - 1) + 1: sh,
                     j * dw: j * dw + sw * (wd - 1) + 1: sw] += part
        out = full[:, :, :, ph: ph + shape[2], pw: pw + shape[3]]
        return np.ascontiguousarray(out).reshape(shape)


class ConvWeightGrad(_ConvBase):
    """dL/dw of Conv2d from its input x and output cotangent gy: (out, in/group, kh, kw)."""
    kind = "conv_weight_grad"

    def __init__(self, params: ConvParams, kernel_hw):
        super().__init__(params)
        self.kernel_hw = tuple(int(v) for v in kernel_hw)

    def attrs(self):
        return dict(self.p.as_dict(), kernel=self.kernel_hw)

    def infer_shape(self, shapes):
        self._check4(shapes)
        (n, c, h, w), (gn, o, oh, ow) = shapes
        g = self.p.group
        if gn != n or c % g or o % g or self.p.out_size((h, w), self.kernel_hw) != (oh, ow):
            raise self.shape_error(shapes, "an input and an output cotangent of one "
                                   f"convolution with kernel {self.kernel_hw}")
        return (o, c // g) + self.kernel_hw

    def vjp(self, args, out, g):
        from .. import functions as F
        x, gy = args
        gr = F.graph_of(g)
        dx = gr.add(ConvTranspose2d(self.p, x.shape[2:]), [gy, g])
        dgy = gr.add(Conv2d(self.p), [x, g])
        return [dx, dgy]

    def reference(self, arrays, shape):
        x, gy = arrays
        n, c = x.shape[:2]
        _, o, oh, ow = gy.shape
        g = self.p.group
        kh, kw = self.kernel_hw
        win = self.p.windows(x, (kh, kw), (oh, ow)).reshape(n, g, c // g, oh, ow, kh, kw)
        gyg = gy.reshape(n, g, o // g, oh, ow)
        return np.einsum("ngchwij,ngohw->gocij", win, gyg, optimize=True).reshape(shape)


# ----------------------------------------------------------------- im2col, col2im

def caffe_out_size(size, kernel, stride, pad, dilation):
    """Caffe's output size along one axis: (size + 2 pad - (dilation (kernel - 1) + 1))
    / stride + 1 with C's division, which truncates toward zero (so a dilated kernel one
    stride longer than the padded input still gives one position, its window reaching
    past the end, where im2col reads zeros)."""
    num = size + 2 * pad - (dilation * (kernel - 1) + 1)
    return (num // stride if num >= 0 else -(-num // stride)) + 1


class _ColBase(Op):
    nargs = 1

    def __init__(self, kernel_hw, stride=1, pad=0, dilation=1, image_hw=None):
        self.kernel_hw = _pair(kernel_hw, "kernel")
        self.p = ConvParams(stride, pad, dilation)
        if min(self.kernel_hw) < 1:
            raise ValueError(f"{self.kind}: kernel {self.kernel_hw} must be >= 1")
        self.image_hw = None if image_hw is None else tuple(int(v) for v in image_hw)

    def attrs(self):
        a = {"kernel": self.kernel_hw, "stride": self.p.stride, "pad": self.p.pad,
             "dilation": self.p.dilation}
        if self.image_hw is not None:
            a["image"] = self.image_hw
        return a

    def geometry(self):
        return dict(stride=self.p.stride, pad=self.p.pad, dilation=self.p.dilation)

    def out_hw(self, hw):
        return tuple(caffe_out_size(n, k, s, p, d) for n, k, s, p, d in
                     zip(hw, self.kernel_hw, self.p.stride, self.p.pad, self.p.dilation))

    def padded(self, x, out_hw):
        """x zero-padded on its last two axes: pad before, and after as far as the last
        window reaches (at least pad)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_hw, self.p.stride, \
            self.p.pad, self.p.dilation
        h, w = x.shape[-2:]
        ah = max(ph, (out_hw[0] - 1) * sh + dh * (kh - 1) + 1 - h - ph)
        aw = max(pw, (out_hw[1] - 1) * sw + dw * (kw - 1) + 1 - w - pw)
        return np.pad(x, ((0, 0), (0, 0), (ph, ah), (pw, aw)))

    def taps(self, out_hw):
        """(ki, kj, row slice, column slice) of each kernel tap in (ki, kj) order: the
        padded input's pixels that tap reads at the output positions."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_hw, self.p.stride, self.p.dilation
        oh, ow = out_hw
        for ki in range(kh):
            for kj in range(kw):
                yield ki, kj, slice(ki * dh, ki * dh + (oh - 1) * sh + 1, sh), \
                    slice(kj * dw, kj * dw + (ow - 1) * sw + 1, sw)


class Im2col(_ColBase):
    """Caffe's im2col over a batch: x (N, C, H, W) to columns (N, C*kh*kw, oh, ow), row
    c*kh*kw + ki*kw + kj holding at output position (y, x) the pixel
    x[n, c, y*sh - ph + ki*dh, x*sw - pw + kj*dw], or 0 where that lies outside the
    image (Caffe's im2col_cpu/_gpu, the Im2col layer's top). Output size by Caffe's
    rule (caffe_out_size). A copy: values, inf and NaN included, are bit-exact. Its
    vjp is Col2im and Col2im's is Im2col."""
    kind = "im2col"

    def __init__(self, kernel_hw, stride=1, pad=0, dilation=1):
        super().__init__(kernel_hw, stride, pad, dilation)

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        (s,) = shapes
        if len(s) != 4:
            raise self.shape_error(shapes, "a 4-d tensor (N, C, H, W)")
        oh, ow = self.out_hw(s[2:])
        if oh < 1 or ow < 1:
            raise self.shape_error(shapes, "an input whose padded size fits the dilated "
                                   f"kernel {self.kernel_hw} (output size ({oh}, {ow}))")
        return (s[0], s[1] * self.kernel_hw[0] * self.kernel_hw[1], oh, ow)

    def vjp(self, args, out, g):
        from .. import functions as F
        (x,) = args
        return [F.graph_of(g).add(Col2im(self.kernel_hw, image_hw=x.shape[2:],
                                         **self.geometry()), [g])]

    def reference(self, arrays, shape):
        (x,) = arrays
        n, c = x.shape[:2]
        out_hw = shape[2:]
        xp = self.padded(x, out_hw)
        cols = np.empty((n, c) + self.kernel_hw + tuple(out_hw), dtype=x.dtype)
        for ki, kj, rs, cs in self.taps(out_hw):
            cols[:, :, ki, kj] = xp[:, :, rs, cs]
        return cols.reshape(shape)


class Col2im(_ColBase):
    """The adjoint of Im2col (Caffe's col2im): columns (N, C*kh*kw, oh, ow) to an image
    (N, C, H, W) = ``image_hw``, each column entry added to the pixel Im2col copied it
    from (entries that came from the padding are dropped). Summation order, the same on
    every backend and in this reference: each pixel starts from 0 and adds its
    contributions in kernel-tap order (ki, then kj, ascending); a pixel receives at most
    one entry per tap. Caffe's col2im_cpu adds in this order too."""
    kind = "col2im"

    def __init__(self, kernel_hw, stride=1, pad=0, dilation=1, image_hw=None):
        if image_hw is None:
            raise ValueError("col2im: image_hw (the image's (H, W)) is required")
        super().__init__(kernel_hw, stride, pad, dilation, image_hw)

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        (s,) = shapes
        taps = self.kernel_hw[0] * self.kernel_hw[1]
        out_hw = self.out_hw(self.image_hw)
        if len(s) != 4 or s[1] % taps or tuple(s[2:]) != out_hw:
            raise self.shape_error(shapes, f"columns (N, C*{taps}, {out_hw[0]}, {out_hw[1]}) "
                                   f"of an image {self.image_hw}")
        return (s[0], s[1] // taps) + self.image_hw

    def vjp(self, args, out, g):
        from .. import functions as F
        return [F.graph_of(g).add(Im2col(self.kernel_hw, **self.geometry()), [g])]

    def reference(self, arrays, shape):
        (col,) = arrays
        n, c = shape[:2]
        out_hw = col.shape[2:]
        cols = col.reshape((n, c) + self.kernel_hw + tuple(out_hw))
        full = self.padded(np.zeros(shape, dtype=col.dtype), out_hw)
        for ki, kj, rs, cs in self.taps(out_hw):
            full[:, :, rs, cs] += cols[:, :, ki, kj]
        (ph, pw), (h, w) = self.p.pad, self.image_hw
        return np.ascontiguousarray(full[:, :, ph:ph + h, pw:pw + w])
