"""Pooling (Caffe's rules), the windowed sum along one axis, and Caffe's LRN as one op.

Caffe's pooling output size rounds up: ``ceil((H + 2p - k) / s) + 1``; when padding
is set and the last window would start beyond the image (inside the bottom/right
padding), that window is dropped. MAX ignores padded positions; AVE divides by the
window's size clipped to the padded image (``H + p``), not to the image, so border
averages count the padding as zeros. MAX's gradient goes to the first maximum in
row-major window order (Caffe compares with ``>``).
"""
from __future__ import annotations


import numpy as np

from .base import Op
from .contraction import _pair


class PoolParams:
    def __init__(self, kernel, stride=1, pad=0, ceil_mode=True):
        self.kernel = _pair(kernel, "kernel")
        self.stride = _pair(stride, "stride")
        self.pad = _pair(pad, "pad")
        self.ceil_mode = bool(ceil_mode)
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.pad) < 0:
            raise ValueError(f"pool2d: kernel {self.kernel} and stride {self.stride} must be "
                             f">= 1 and pad {self.pad} >= 0")
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise ValueError(f"pool2d: pad {self.pad} must be smaller than kernel {self.kernel}")

    def as_dict(self):
        return {"kernel": self.kernel, "stride": self.stride, "pad": self.pad,
                "ceil_mode": self.ceil_mode}

    def out_len(self, n, axis):
        k, s, p = self.kernel[axis], self.stride[axis], self.pad[axis]
        span = n + 2 * p - k
        out = (-(-span // s) if self.ceil_mode else span // s) + 1
        if p > 0 and (out - 1) * s >= n + p:
            out -= 1    # Caffe: the last window must start inside the image or left pad
        return out

    def ranges(self, n, axis):
        """Per output index: (start, end) clipped to the image and the AVE divisor span."""
        k, s, p = self.kernel[axis], self.stride[axis], self.pad[axis]
        result = []
        for i in range(self.out_len(n, axis)):
            start = i * s - p
            end = min(start + k, n + p)
            span = end - start
            result.append((max(start, 0), min(end, n), span))
        return result


class _PoolBase(Op):
    def __init__(self, params: PoolParams):
        self.p = params

    def attrs(self):
        return self.p.as_dict()

    def out_shape(self, in_shape):
        n, c, h, w = in_shape
        return (n, c, self.p.out_len(h, 0), self.p.out_len(w, 1))

    def cells(self, in_shape):
        """(i, j, hs, he, ws, we, area) for every output position."""
        rows = self.p.ranges(in_shape[2], 0)
        cols = self.p.ranges(in_shape[3], 1)
        for i, (hs, he, sh) in enumerate(rows):
            for j, (ws, we, sw) in enumerate(cols):
                yield i, j, hs, he, ws, we, sh * sw

    def argmax_positions(self, x):
        """For each output cell: flat (h, w) positions of the first maximum, per (n, c)."""
        for i, j, hs, he, ws, we, _ in self.cells(x.shape):
            win = x[:, :, hs:he, ws:we].reshape(x.shape[0], x.shape[1], -1)
            k = np.argmax(win, axis=2)
            yield i, j, hs + k // (we - ws), ws + k % (we - ws)


class Pool2d(_PoolBase):
    kind = "pool2d"
    nargs = 1

    def __init__(self, how, params: PoolParams):
        if how not in ("max", "ave"):
            raise ValueError(f"pool2d: unknown method '{how}', expected 'max' or 'ave'")
        super().__init__(params)
        self.how = how
        self.label = f"{how}pool"

    def attrs(self):
        return dict(self.p.as_dict(), how=self.how)

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        if len(shapes[0]) != 4:
            raise self.shape_error(shapes, "a 4-d tensor (N, C, H, W)")
        out = self.out_shape(shapes[0])
        if out[2] < 1 or out[3] < 1:
            raise self.shape_error(shapes, f"an image at least as large as kernel {self.p.kernel}"
                                   f" minus padding")
        for axis, (n, o) in enumerate(zip(shapes[0][2:], out[2:])):
            last = (o - 1) * self.p.stride[axis] - self.p.pad[axis]
            if last >= n:
                # ceil rounding with stride > kernel and no padding: Caffe would pool an
                # empty window (-FLT_MAX for MAX, 0/0 for AVE)
                raise self.shape_error(
                    shapes, f"every window to overlap the image, but the last window along "
                    f"axis {axis + 2} starts at {last} of {n}; use ceil_mode=False, a kernel "
                    f">= the stride, or padding")
        return out

    def vjp(self, args, out, g):
        from .. import functions as F
        (x,) = args
        if self.how == "max":
            return [F.graph_of(g).add(MaxPoolGrad(self.p), [x, g])]
        return [F.graph_of(g).add(AvePoolGrad(self.p, x.shape), [g])]

    def reference(self, arrays, shape):
        (x,) = arrays
        y = np.empty(shape, dtype=x.dtype)
        for i, j, hs, he, ws, we, area in self.cells(x.shape):
            win = x[:, :, hs:he, ws:we]
            y[:, :, i, j] = win.max(axis=(2, 3)) if self.how == "max" else \
                win.sum(axis=(2, 3)) / area
        return y


class MaxPoolGrad(_PoolBase):
    """Max pooling's input gradient: g routed to each window's first maximum of x."""
    kind = "maxpool_grad"
    nargs = 2

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        x, g = shapes
        if len(x) != 4 or tuple(g) != self.out_shape(x):
            raise self.shape_error(shapes, "x (N, C, H, W) and g of max pooling's output shape")
        return tuple(x)

    def vjp(self, args, out, g):
        from .. import functions as F
        x, _ = args
        return [None, F.graph_of(g).add(MaxPoolSelect(self.p), [x, g])]

    def reference(self, arrays, shape):
        x, g = arrays
        dx = np.zeros(shape, dtype=g.dtype)
        n_idx, c_idx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        for i, j, hh, ww in self.argmax_positions(x):
            dx[n_idx, c_idx, hh, ww] += g[:, :, i, j]
        return dx


class MaxPoolSelect(_PoolBase):
    """The adjoint of MaxPoolGrad in g: G read at each window's first maximum of x."""
    kind = "maxpool_select"
    nargs = 2

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        x, gx = shapes
        if len(x) != 4 or tuple(gx) != tuple(x):
            raise self.shape_error(shapes, "two tensors of one (N, C, H, W) shape")
        return self.out_shape(x)

    def vjp(self, args, out, g):
        from .. import functions as F
        x, _ = args
        return [None, F.graph_of(g).add(MaxPoolGrad(self.p), [x, g])]

    def reference(self, arrays, shape):
        x, gx = arrays
        y = np.empty(shape, dtype=gx.dtype)
        n_idx, c_idx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        for i, j, hh, ww in self.argmax_positions(x):
            y[:, :, i, j] = gx[n_idx, c_idx, hh, ww]
        return y


class AvePoolGrad(_PoolBase):
    """Average pooling's input gradient: g / area spread over each window."""
    kind = "avepool_grad"
    nargs = 1

    def __init__(self, params, in_shape):
        super().__init__(params)
        self.in_shape = tuple(in_shape)

    def attrs(self):
        return dict(self.p.as_dict(), in_shape=self.in_shape)

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        if tuple(shapes[0]) != self.out_shape(self.in_shape):
            raise self.shape_error(shapes, f"[{self.out_shape(self.in_shape)}]")
        return self.in_shape

    def vjp(self, args, out, g):
        from .. import functions as F
        return [F.graph_of(g).add(Pool2d("ave", self.p), [g])]

    def reference(self, arrays, shape):
        (g,) = arrays
        dx = np.zeros(shape, dtype=g.dtype)
        for i, j, hs, he, ws, we, area in self.cells(shape):
            dx[:, :, hs:he, ws:we] += (g[:, :, i, j] / area)[:, :, None, None]
        return dx


class WindowSum(Op):
    """y[..., c, ...] = sum of x[..., c - before .. c + after, ...] (zeros outside)."""
    kind = "window_sum"
    nargs = 1

    def __init__(self, axis, before, after):
        self.axis, self.before, self.after = int(axis), int(before), int(after)
        if self.before < 0 or self.after < 0:
            raise ValueError(f"window_sum: before {before} and after {after} must be >= 0")

    def attrs(self):
        return {"axis": self.axis, "before": self.before, "after": self.after}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        if not 0 <= self.axis < len(shapes[0]):
            raise self.shape_error(shapes, f"a tensor with axis {self.axis}")
        return tuple(shapes[0])

    def vjp(self, args, out, g):
        from .. import functions as F
        return [F.graph_of(g).add(WindowSum(self.axis, self.after, self.before), [g])]

    def reference(self, arrays, shape):
        (x,) = arrays
        pads = [(0, 0)] * x.ndim
        pads[self.axis] = (self.before, self.after)
        xp = np.pad(x, pads)
        n = x.shape[self.axis]
        total = np.zeros(shape, dtype=x.dtype)
        for j in range(self.before + self.after + 1):
            total += np.take(xp, range(j, j + n), axis=self.axis)
        return total


class LRN(Op):
    """Caffe's local response normalization of an (N, C, H, W) blob in one op:
    y = x * scale ^ -beta with scale = k + coeff * S, S the sum of x^2 over a window of
    ``size`` (odd) centred on each value, zeros outside the blob:

    - region "across": channels c - (size-1)/2 .. c + (size-1)/2 (Caffe's
      ACROSS_CHANNELS, coeff = alpha / local_size);
    - region "within": a size x size square of the channel's plane (Caffe's
      WITHIN_CHANNEL, coeff = alpha / local_size^2, k = 1).

    Its gradient is built from window_sum and elementwise ops (the window is symmetric,
    so the sum is its own adjoint)."""
    kind = "lrn"
    nargs = 1

    def __init__(self, region, size, coeff, beta, k):
        if region not in ("across", "within"):
            raise ValueError(f"lrn: unknown region '{region}', expected 'across' or 'within'")
        size = int(size)
        if size < 1 or size % 2 != 1:
            raise ValueError(f"lrn: window size {size} must be odd and positive")
        self.region, self.size = region, size
        self.coeff, self.beta, self.k = float(coeff), float(beta), float(k)
        self.label = f"lrn_{region}"

    def attrs(self):
        return {"region": self.region, "size": self.size, "coeff": self.coeff,
                "beta": self.beta, "k": self.k}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        if len(shapes[0]) != 4:
            raise self.shape_error(shapes, "a 4-d tensor (N, C, H, W)")
        return tuple(shapes[0])

    def window_sum(self, t):
        """The graph of S for a tensor t: the windowed sum this op applies to x^2."""
        from .. import functions as F
        pre = (self.size - 1) // 2
        if self.region == "across":
            return F.window_sum(t, 1, pre, pre)
        return F.window_sum(F.window_sum(t, 2, pre, pre), 3, pre, pre)

    def vjp(self, args, out, g):
        from .. import functions as F
        (x,) = args
        scale = self.window_sum(x * x) * self.coeff + self.k
        # dy/dx = scale^-beta + x * d(scale^-beta)/dscale * dscale/dx; dscale/dx is
        # 2 coeff x through the (symmetric) window
        inner = g * x * F.pow(scale, -self.beta - 1.0) * (-self.beta)
        return [g * F.pow(scale, -self.beta) + self.window_sum(inner) * x * (2.0 * self.coeff)]

    def reference(self, arrays, shape):
        (x,) = arrays
        pre = (self.size - 1) // 2
        sq = x * x
        axes = (1,) if self.region == "across" else (2, 3)
        total = sq
        for axis in axes:
            total = WindowSum(axis, pre, pre).reference([total], shape)
        f = x.dtype.type
        scale = total * f(self.coeff) + f(self.k)
        return (x * np.power(scale, f(-self.beta))).astype(x.dtype)


class MaxPoolArgmax(_PoolBase):
    """Caffe's mask top of MAX pooling: per window, the flat position h * W + w (inside
    the input plane, as a float) of the first maximum in row-major window order (Caffe
    takes a value only when it is greater than the best so far). Integer-valued: no
    gradient flows through it."""
    kind = "maxpool_argmax"
    nargs = 1

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        if len(shapes[0]) != 4:
            raise self.shape_error(shapes, "a 4-d tensor (N, C, H, W)")
        return self.out_shape(shapes[0])

    def vjp(self, args, out, g):
        return [None]

    def reference(self, arrays, shape):
        (x,) = arrays
        y = np.empty(shape, dtype=np.float32)
        for i, j, hh, ww in self.argmax_positions(x):
            y[:, :, i, j] = hh * x.shape[3] + ww
        return y


class StochasticPoolSample(_PoolBase):
    """Caffe's STOCHASTIC pooling draw (its GPU kernel StoPoolForwardTrain) on windows
    that lie inside x (no padding, no clipping): with t = v * sum(window), the flat
    position h * W + w of the first element, in row-major window order, at which the
    running sum reaches t (``>=``); v in (0, 1] is ``1 - u`` for the uniform u in
    [0, 1) given per window. Sums are float32, in window order. Where no element reaches
    t (only when the window sums below 0, where Caffe leaves its top unwritten), the
    window's first element. Integer-valued: no gradient."""
    kind = "stochastic_pool_sample"
    nargs = 2

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        x, u = shapes
        if len(x) != 4 or tuple(u) != self.out_shape(x):
            raise self.shape_error(shapes, "x (N, C, H, W) and uniforms of the pooled shape")
        for axis in range(2):
            k, s, n = self.p.kernel[axis], self.p.stride[axis], x[2 + axis]
            if self.p.pad[axis] or (n - k) % s or n < k:
                raise self.shape_error(shapes, "unpadded windows that tile x exactly "
                                       "((size - kernel) divisible by the stride)")
        return self.out_shape(x)

    def vjp(self, args, out, g):
        return [None, None]

    def reference(self, arrays, shape):
        x, u = arrays
        kh, kw = self.p.kernel
        sh, sw = self.p.stride
        N, C, oh, ow = shape
        W = x.shape[3]
        y = np.empty(shape, dtype=np.float32)
        for i in range(oh):
            for j in range(ow):
                win = x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(N, C, -1)
                run = np.cumsum(win.astype(np.float32), axis=2, dtype=np.float32)
                thres = (np.float32(1.0) - u[:, :, i, j].astype(np.float32)) * run[:, :, -1]
                hit = run >= thres[:, :, None]
                k = np.where(hit.any(axis=2), np.argmax(hit, axis=2), 0)
                y[:, :, i, j] = (i * sh + k // kw) * W + j * sw + k % kw
        return y


class PoolIndexSelect(_PoolBase):
    """y[n, c, i, j] = x[n, c] at the flat plane position idx[n, c, i, j] (a pooling
    window's chosen element); the gradient in x goes to that element."""
    kind = "pool_index_select"
    nargs = 2

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        idx, x = shapes
        if len(x) != 4 or tuple(idx) != self.out_shape(x):
            raise self.shape_error(shapes, "indices of the pooled shape and x (N, C, H, W)")
        return tuple(idx)

    def vjp(self, args, out, g):
        from .. import functions as F
        idx, x = args
        return [None, F.graph_of(g).add(PoolIndexGrad(self.p, x.shape), [idx, g])]

    def reference(self, arrays, shape):
        idx, x = arrays
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        i = idx.astype(np.int64).reshape(shape[0], shape[1], -1)
        return np.take_along_axis(flat, i, axis=2).reshape(shape).astype(x.dtype)


class PoolIndexGrad(_PoolBase):
    """The adjoint of PoolIndexSelect in x: g routed to each window's chosen element
    (summed where windows overlap)."""
    kind = "pool_index_grad"
    nargs = 2

    def __init__(self, params, in_shape):
        super().__init__(params)
        self.in_shape = tuple(int(d) for d in in_shape)

    def attrs(self):
        return dict(self.p.as_dict(), in_shape=self.in_shape)

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        idx, g = shapes
        if tuple(idx) != tuple(g) or tuple(g) != self.out_shape(self.in_shape):
            raise self.shape_error(shapes, f"indices and g of shape "
                                   f"{self.out_shape(self.in_shape)}")
        return self.in_shape

    def vjp(self, args, out, g):
        from .. import functions as F
        idx, _ = args
        return [None, F.graph_of(g).add(PoolIndexSelect(self.p), [idx, g])]

    def reference(self, arrays, shape):
        idx, g = arrays
        N, C = shape[:2]
        dx = np.zeros((N, C, shape[2] * shape[3]), dtype=g.dtype)
        i = idx.astype(np.int64).reshape(N, C, -1)
        n_idx, c_idx = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
        gf = g.reshape(N, C, -1)
        for k in range(i.shape[2]):
            np.add.at(dx, (n_idx, c_idx, i[:, :, k]), gf[:, :, k])
        return dx.reshape(shape)


def pool_out_len(n, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooled size of one axis (exposed for layers and tests)."""
    return PoolParams(kernel, stride, pad, ceil_mode).out_len(n, 0)


__all__ = ["PoolParams", "Pool2d", "MaxPoolGrad", "MaxPoolSelect", "AvePoolGrad",
           "MaxPoolArgmax", "StochasticPoolSample", "PoolIndexSelect", "PoolIndexGrad",
           "WindowSum", "LRN", "pool_out_len"]
