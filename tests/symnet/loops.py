"""Direct loop implementations (plain Python over output positions) of convolution,
transposed convolution and Caffe's pooling: independent references for the tests."""
from __future__ import annotations

import math

import numpy as np


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv2d(x, w, stride=1, pad=0, dilation=1, group=1):
    """y[n, o, oy, ox] = sum over c, i, j of w[o, c, i, j] * x[n, gc + c, iy, ix]."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(pad), _pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = o // group
    y = np.zeros((n, o, oh, ow))
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for oy in range(oh):
                for ox in range(ow):
                    acc = 0.0
                    for ci in range(cg):
                        for i in range(kh):
                            iy = oy * sh - ph + i * dh
                            if not 0 <= iy < h:
                                continue
                            for j in range(kw):
                                ix = ox * sw - pw + j * dw
                                if 0 <= ix < wd:
                                    acc += w[oc, ci, i, j] * x[b, g * cg + ci, iy, ix]
                    y[b, oc, oy, ox] = acc
    return y


def conv_transpose2d(x, w, stride=1, pad=0, dilation=1, group=1, output_padding=0):
    """Scatter: every input pixel adds w-weighted copies into the output
    (Caffe's Deconvolution; w is (in, out/group, kh, kw))."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(pad), _pair(dilation)
    oph, opw = _pair(output_padding)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // group
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + 1 + oph
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + 1 + opw
    y = np.zeros((n, og * group, oh, ow))
    for b in range(n):
        for ci in range(c):
            g = ci // cg
            for iy in range(h):
                for ix in range(wd):
                    v = x[b, ci, iy, ix]
                    for oc in range(og):
                        for i in range(kh):
                            oy = iy * sh - ph + i * dh
                            if not 0 <= oy < oh:
                                continue
                            for j in range(kw):
                                ox = ix * sw - pw + j * dw
                                if 0 <= ox < ow:
                                    y[b, g * og + oc, oy, ox] += v * w[ci, oc, i, j]
    return y


def pool_out_len(n, k, s, p):
    """Caffe: ceil((n + 2p - k) / s) + 1, minus one if the last window starts in the
    bottom/right padding."""
    out = int(math.ceil((n + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool2d(x, kernel, stride, pad, method):
    """Caffe's PoolingLayer forward, one output position at a time."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
    n, c, h, wd = x.shape
    oh, ow = pool_out_len(h, kh, sh, ph), pool_out_len(wd, kw, sw, pw)
    y = np.zeros((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for py in range(oh):
                for px in range(ow):
                    hs, ws = py * sh - ph, px * sw - pw
                    he, we = min(hs + kh, h + ph), min(ws + kw, wd + pw)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, wd)
                    vals = [x[b, ch, i, j] for i in range(hs, he) for j in range(ws, we)]
                    if method == "max":
                        y[b, ch, py, px] = max(vals)
                    else:
                        y[b, ch, py, px] = sum(vals) / size
    return y


def window_sum(x, axis, before, after):
    """y[..., c, ...] = sum of x[..., c - before .. c + after, ...] inside the axis."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    y = np.zeros_like(x)
    n = x.shape[0]
    for c in range(n):
        for k in range(c - before, c + after + 1):
            if 0 <= k < n:
                y[c] += x[k]
    return np.moveaxis(y, 0, axis)
