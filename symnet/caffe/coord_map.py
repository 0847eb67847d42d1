"""pycaffe's ``caffe.coord_map``: how the spatial coordinates of one top map to
another's, and the Crop layer that aligns them (as FCN nets use).

A layer's map is (axis, scale a, shift b): its output coordinate is ``a * x + b`` for
input coordinate ``x``; maps compose along the path between two tops through their
nearest common ancestor. Convolution and pooling map with
``a = 1/stride, b = (pad - (k_eff - 1)/2) / stride``, deconvolution with
``a = stride, b = (k_eff - 1)/2 - pad`` (``k_eff = (k - 1) * dilation + 1``),
pointwise layers are the identity and a Crop shifts by ``-offset``.

Works on NetSpec tops (``n.score_fr``) and on prototxt nets: ``tops_of(net)`` gives
NetSpec-like tops of a NetParameter or prototxt path, by blob name.
"""
from __future__ import annotations

import os

import numpy as np

from ..formats import prototxt, upgrade
from .net_spec import _PARAM_FIELD, Function
from .net_spec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU",
                       "Log", "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale",
                       "Sigmoid", "Split", "TanH", "Threshold"]


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (the walk stops there)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes."""


def _param_dict(fn, field):
    return fn.params.get(field, fn.params)


def conv_params(fn):
    """(axis, stride, effective kernel size, pad) of a Convolution, Deconvolution,
    Im2col or Pooling function, as arrays."""
    params = _param_dict(fn, "convolution_param")
    if set(params) & {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}:
        raise ValueError(f"coord_map: layer type {fn.type_name} with _h/_w parameters is "
                         "not supported (give kernel_size, stride and pad)")
    axis = params.get("axis", 1)
    ks = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (axis, np.array(params.get("stride", 1), ndmin=1), (ks - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop function with Caffe's defaults (axis 2, offset 0)."""
    params = _param_dict(fn, "crop_param")
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The (axis, scale, shift) map of one layer function."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset          # maps count from the last non-spatial axis
    raise UndefinedMapException(fn.type_name)


def compose(base_map, next_map):
    """``base_map`` followed by ``next_map``: scales multiply, the further shift is
    scaled by the base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"axes {ax1} and {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(cmap):
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _bottoms(top):
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs   # Crop's 2nd: reference


def _ancestors(top):
    """{top: map from it to ``top``} over every top ``top`` is reached from."""
    maps = {top: (None, 1, 0)}
    frontier = [top]
    while frontier:
        t = frontier.pop()
        try:
            step = coord_map(t.fn)
        except UndefinedMapException:
            continue
        for b in _bottoms(t):
            if b not in maps:
                maps[b] = compose(maps[t], step)
                frontier.append(b)
    return maps


def coord_map_from_to(top_from, top_to):
    """The (axis, scale, shift) map from ``top_from``'s coordinates to ``top_to``'s,
    through their nearest common ancestor."""
    from_maps = _ancestors(top_from)
    to_maps = {top_to: (None, 1, 0)}
    frontier = [top_to]
    while frontier:
        t = frontier.pop(0)                  # breadth first: the nearest common top
        if t in from_maps:
            return compose(to_maps[t], inverse(from_maps[t]))
        try:
            step = coord_map(t.fn)
        except UndefinedMapException:
            continue
        for b in _bottoms(t):
            if b not in to_maps:
                to_maps[b] = compose(to_maps[t], step)
                frontier.append(b)
    raise RuntimeError("coord_map: the tops have no common ancestor through spatial layers "
                       "(are they connected by convolution, pooling, crop or pointwise "
                       "layers?)")


def crop_offsets(top_from, top_to):
    """(axis, offsets) of the Crop that aligns ``top_from`` to ``top_to``."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (a == 1).all():
        raise ValueError(f"coord_map.crop: scale mismatch (a = {a})")
    if not (b <= 0).all():
        raise ValueError(f"coord_map.crop: cannot crop a negative offset (b = {b})")
    if not (np.round(b) == b).all():
        raise ValueError(f"coord_map.crop: cannot crop a non-integer offset (b = {b})")
    return ax + 1, [int(v) for v in -np.round(b)]


def crop(top_from, top_to):
    """A NetSpec Crop layer cropping ``top_from`` to ``top_to``'s extent, with the
    axis and offsets the coordinate map gives."""
    axis, offset = crop_offsets(top_from, top_to)
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis, offset=offset))


# ------------------------------------------------------------ prototxt nets

def _message_dict(msg):
    from google.protobuf import json_format
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def tops_of(net):
    """NetSpec-like tops of a NetParameter (or prototxt path, or Net) by blob name:
    the last top of that name, so in-place layers chain as the prototxt reads."""
    if isinstance(net, (str, os.PathLike)):
        net = prototxt.parse_net(os.fspath(net))
    elif hasattr(net, "param") and not hasattr(net, "layer"):
        net = net.param
    net = upgrade.upgrade_net(net)[0]
    tops = {}
    for lp in net.layer:
        field = _PARAM_FIELD.get(lp.type)
        params = {}
        if field and field in lp.DESCRIPTOR.fields_by_name and lp.HasField(field):
            params = _message_dict(getattr(lp, field))
        inputs = [tops[b] for b in lp.bottom if b in tops]
        fn = Function(lp.type, inputs, dict(params, ntop=len(lp.top), name=lp.name))
        for name, top in zip(lp.top, fn.tops):
            tops[name] = top
    return tops
