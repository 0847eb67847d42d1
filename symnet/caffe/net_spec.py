"""pycaffe's net_spec: write nets in Python, get a NetParameter.

    from symnet.caffe import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 32, 32]))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    print(n.to_proto())

Keyword arguments go into the layer type's parameter message (``convolution_param``
for Convolution); ones naming LayerParameter fields (``param``, ``include``,
``loss_weight``, ``transform_param``...) are set there. ``ntop=`` gives several tops
(a tuple of Tops), ``in_place=True`` writes the top over the bottom.

``ntop=0`` makes a layer without tops (e.g. ``n.silence = L.Silence(n.x, ntop=0)``):
the layer function then returns the layer itself, which a NetSpec names after the
attribute it is assigned to (else ``<type><count>``), as pycaffe does. Bottoms must be
Tops; anything else raises TypeError naming the layer type and the argument.
"""
from __future__ import annotations

import collections

from ..formats.proto import caffe_pb2


def _param_fields():
    """Layer type name -> its parameter field, from the schema ("Convolution" ->
    "convolution_param"), as pycaffe derives it."""
    out = {}
    for fd in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if fd.name.endswith("_param") and fd.message_type is not None:
            out[fd.message_type.name[:-len("Parameter")]] = fd.name
    # types whose parameters live in a differently named message
    out.update({"Deconvolution": "convolution_param", "SoftmaxWithLoss": "softmax_param",
                "ReLU": "relu_param", "PReLU": "prelu_param", "TanH": "tanh_param"})
    return out


_PARAM_FIELD = _param_fields()


def _assign(msg, key, value):
    """Set field ``key`` of protobuf ``msg`` from a Python value (dicts for messages,
    lists for repeated fields, enum names or numbers)."""
    fd = msg.DESCRIPTOR.fields_by_name.get(key)
    if fd is None:
        raise AttributeError(f"{msg.DESCRIPTOR.name} has no field '{key}'")
    repeated = getattr(fd, "is_repeated", None)
    if repeated is None:
        repeated = fd.label == fd.LABEL_REPEATED
    values = value if isinstance(value, (list, tuple)) else [value]
    if fd.message_type is not None:
        if repeated:
            for v in values:
                _fill(getattr(msg, key).add(), v)
        else:
            _fill(getattr(msg, key), value)
    elif repeated:
        getattr(msg, key).extend(values)
    else:
        setattr(msg, key, value)


def _fill(msg, value):
    if isinstance(value, dict):
        for k, v in value.items():
            _assign(msg, k, v)
    else:
        msg.CopyFrom(value)


class Top:
    """One output of a layer function (an argument for the next layer)."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def to_proto(self):
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        self.fn._to_proto(layers, names, autonames)

    def _update(self, params):
        self.fn._update(params)


def _describe(value):
    if isinstance(value, Function):
        return f"a {value.type_name} layer with ntop=0 (it has no top)"
    if isinstance(value, tuple) and value and all(isinstance(v, Top) for v in value):
        return (f"a tuple of {len(value)} Tops (a layer with ntop={len(value)}; pass one "
                "of them, or unpack them with *)")
    cls = type(value)
    qual = cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"
    return f"{qual} {value!r:.60}"


class Function:
    """One layer: its type, bottoms (Tops of other layers) and parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        self.inputs = list(inputs)
        for i, inp in enumerate(self.inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top: got {_describe(inp)}; "
                                "bottoms are the outputs of layer functions (e.g. n.data)")
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        if isinstance(self.ntop, bool) or not isinstance(self.ntop, int) or self.ntop < 0:
            raise TypeError(f"{type_name}: ntop must be a non-negative integer, got "
                            f"{self.ntop!r}")
        self.in_place = self.params.pop("in_place", False)
        self.name = self.params.pop("name", None)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _update(self, params):
        self.params.update(params)

    def _top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _layer_name(self, names, autonames):
        if self.name:
            return self.name
        if self.ntop:
            return self._top_name(self.tops[0], names, autonames)
        if self not in names:
            autonames[self.type_name] += 1
            names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp.fn._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        lp = caffe_pb2.LayerParameter()
        lp.type = self.type_name
        lp.bottom.extend(bottoms)
        if self.in_place:
            lp.top.extend(lp.bottom)
        else:
            lp.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        lp.name = self._layer_name(names, autonames)
        for k, v in self.params.items():
            if k in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
                _assign(lp, k, v)
            else:
                field = _PARAM_FIELD.get(self.type_name)
                if field is None:
                    raise AttributeError(f"layer type '{self.type_name}' has no parameter "
                                         f"message for argument '{k}'")
                _assign(getattr(lp, field), k, v)
        layers[self] = lp


def _checked(name, value):
    """A NetSpec entry or to_proto argument: a Top, or a layer without tops."""
    if not isinstance(value, (Top, Function)):
        raise TypeError(f"{name} is not a Top: got {_describe(value)}")
    return value


class NetSpec:
    """Assign layer outputs as attributes; ``to_proto()`` names tops after them (and
    layers without tops, ``ntop=0``, after their attribute)."""

    def __init__(self):
        super().__setattr__("tops", collections.OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def update(self, name, params):
        """Add or change parameters of the layer that made entry ``name``."""
        self.tops[name]._update(params)

    def to_proto(self):
        for name, value in self.tops.items():
            _checked(f"NetSpec entry '{name}'", value)
        names = {v: k for k, v in self.tops.items()}
        autonames = collections.Counter()
        layers = collections.OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops):
    """A NetParameter with every layer needed for ``tops`` (Tops, or layers without
    tops), their blobs named automatically (``<type><count>``)."""
    layers = collections.OrderedDict()
    autonames = collections.Counter()
    for i, top in enumerate(tops):
        _checked(f"to_proto argument {i}", top)._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class _Layers:
    """``L.Convolution(bottom, **params)`` makes a layer function of that type."""

    def __getattr__(self, name):
        if name.startswith("__"):       # module protocol (__file__, __path__...): the
            raise AttributeError(name)  # object stands in sys.modules as caffe.layers
        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            return fn.tops[0] if fn.ntop == 1 else (fn.tops if fn.ntop else fn)
        return layer_fn


class _Parameters:
    """``P.Pooling.MAX``: enum values of a layer type's parameter message."""

    def __getattr__(self, name):
        message = getattr(caffe_pb2, f"{name}Parameter", None)
        if message is None:
            raise AttributeError(f"no parameter message for layer type '{name}'")

        class _Enums:
            def __getattr__(self, value):
                for enum in message.DESCRIPTOR.enum_types:
                    if value in enum.values_by_name:
                        return enum.values_by_name[value].number
                raise AttributeError(f"{message.DESCRIPTOR.name} has no enum value '{value}'")
        return _Enums()


layers = _Layers()
params = _Parameters()
