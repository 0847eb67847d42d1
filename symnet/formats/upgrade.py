"""Bringing old Caffe nets and solvers up to the current format, in memory.

``upgrade_net`` does what Caffe's ``UpgradeNetAsNeeded`` (upgrade_proto.cpp) does when
it loads a net, in the same order:

1. V0 layers (``layers { layer { type: "conv" ... } }``, Caffe's first format) become
   V1 layers; ``padding`` layers are folded into the following conv/pool layer.
2. V1 data layers (DATA, IMAGE_DATA, WINDOW_DATA) have their old transformation fields
   (scale, mean_file, crop_size, mirror) moved into ``transform_param``.
3. V1 layers (``layers { type: CONVOLUTION blobs_lr: 1 weight_decay: 1 }``) become
   current layers (``layer { type: "Convolution" param { lr_mult: 1 decay_mult: 1 } }``)
   with their include/exclude rules, blobs and per-type parameters.
4. The deprecated net inputs (``input:`` with ``input_dim:`` x4 or ``input_shape``)
   become an ``Input`` layer named "input" placed first, as UpgradeNetInput does.
5. BatchNorm layers that declare three ``param`` specs (the old way to freeze their
   statistics) get lr_mult and decay_mult 0 on them.

``upgrade_solver`` turns the deprecated ``solver_type: ENUM`` into ``type: "Name"``
(UpgradeSolverAsNeeded) and, beyond Caffe, upgrades nets given inline in the solver.

Both return a new message and a list of notes (one line per change, for logs) and
never change their argument.
"""
from __future__ import annotations

import os

from symnet.formats.proto import caffe_pb2
from symnet.formats.prototxt import (PrototxtError, parse_net, parse_solver,
                                     read_net_binary, write_net_binary, write_text)

__all__ = ["UpgradeError", "upgrade_net", "upgrade_solver", "upgrade_file",
           "net_needs_upgrade", "V1_LAYER_TYPES"]

_V1 = caffe_pb2.V1LayerParameter


class UpgradeError(PrototxtError):
    """A net or solver in an old format cannot be upgraded (Caffe would refuse too)."""


# V1LayerParameter.LayerType value name -> current layer type string.
V1_LAYER_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax",
    "BNLL": "BNLL", "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "DATA": "Data",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# The per-type parameter messages a V1 layer can carry; all move over unchanged.
_V1_PARAM_FIELDS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param",
    "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param",
    "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param",
    "slice_param", "tanh_param", "threshold_param", "window_data_param",
    "transform_param", "loss_param",
)

# V0 layer type string -> V1 LayerType value name.
V0_LAYER_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT", "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# V0 field -> {V0 type (None: any type): (V1 parameter message, its field, how)}
# how: "set" a scalar, "add" to a repeated field, "copy" a message.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output", "set"),
                   "innerproduct": ("inner_product_param", "num_output", "set")},
    "biasterm": {"conv": ("convolution_param", "bias_term", "set"),
                 "innerproduct": ("inner_product_param", "bias_term", "set")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler", "copy"),
                      "innerproduct": ("inner_product_param", "weight_filler", "copy")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler", "copy"),
                    "innerproduct": ("inner_product_param", "bias_filler", "copy")},
    "pad": {"conv": ("convolution_param", "pad", "add"),
            "pool": ("pooling_param", "pad", "set")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size", "add"),
                   "pool": ("pooling_param", "kernel_size", "set")},
    "group": {"conv": ("convolution_param", "group", "set")},
    "stride": {"conv": ("convolution_param", "stride", "add"),
               "pool": ("pooling_param", "stride", "set")},
    "pool": {"pool": ("pooling_param", "pool", "set")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", "set")},
    "local_size": {"lrn": ("lrn_param", "local_size", "set")},
    "alpha": {"lrn": ("lrn_param", "alpha", "set")},
    "beta": {"lrn": ("lrn_param", "beta", "set")},
    "k": {"lrn": ("lrn_param", "k", "set")},
    "source": {"data": ("data_param", "source", "set"),
               "hdf5_data": ("hdf5_data_param", "source", "set"),
               "images": ("image_data_param", "source", "set"),
               "window_data": ("window_data_param", "source", "set"),
               "infogain_loss": ("infogain_loss_param", "source", "set")},
    "scale": {None: ("transform_param", "scale", "set")},
    "meanfile": {None: ("transform_param", "mean_file", "set")},
    "batchsize": {"data": ("data_param", "batch_size", "set"),
                  "hdf5_data": ("hdf5_data_param", "batch_size", "set"),
                  "images": ("image_data_param", "batch_size", "set"),
                  "window_data": ("window_data_param", "batch_size", "set")},
    "cropsize": {None: ("transform_param", "crop_size", "set")},
    "mirror": {None: ("transform_param", "mirror", "set")},
    "rand_skip": {"data": ("data_param", "rand_skip", "set"),
                  "images": ("image_data_param", "rand_skip", "set")},
    "shuffle_images": {"images": ("image_data_param", "shuffle", "set")},
    "new_height": {"images": ("image_data_param", "new_height", "set")},
    "new_width": {"images": ("image_data_param", "new_width", "set")},
    "concat_dim": {"concat": ("concat_param", "concat_dim", "set")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", "set")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", "set")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", "set")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", "set")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", "set")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None, "copy")},
}

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_PARAM_OF = {_V1.DATA: "data_param", _V1.IMAGE_DATA: "image_data_param",
                  _V1.WINDOW_DATA: "window_data_param"}

_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                 "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def _layer_label(layer, index):
    name = layer.name if layer.HasField("name") else ""
    return f'"{name}"' if name else f"#{index + 1}"


# ----------------------------------------------------------------------------- V0 -> V1

def _needs_v0(net) -> bool:
    return any(layer.HasField("layer") for layer in net.layers)


def _fold_v0_padding(net):
    """Copy of a V0 net with its padding layers folded into the next conv/pool layer."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top = {name: -1 for name in net.input}
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise UpgradeError(f"V0 net: layer {_layer_label(v0, i)} reads blob "
                                   f'"{blob}", which no earlier layer or input produces')
            src = last_top[blob]
            if src < 0:
                continue
            source = net.layers[src]
            if source.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise UpgradeError(f"V0 net: padding layer {_layer_label(source.layer, src)}"
                                   f" feeds layer {_layer_label(v0, i)} of type "
                                   f'"{v0.type}"; expected a conv or pool layer')
            if len(conn.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                raise UpgradeError(f"V0 net: padding layer {_layer_label(source.layer, src)}"
                                   f" and layer {_layer_label(v0, i)} must have a single "
                                   f"input and output to be merged")
            target = out.layers[len(out.layers) - 1]
            target.layer.pad = source.layer.pad
            target.bottom[j] = source.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def _upgrade_v0_layer(conn, index, notes):
    """A V1LayerParameter for one V0 layer connection (UpgradeV0LayerParameter)."""
    out = _V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return out
    v0 = conn.layer
    label = _layer_label(v0, index)
    if v0.HasField("name"):
        out.name = v0.name
    vtype = v0.type
    if v0.HasField("type"):
        if vtype not in V0_LAYER_TYPES:
            raise UpgradeError(f'V0 layer {label}: unknown V0 layer type "{vtype}"; '
                               f"expected one of {', '.join(sorted(V0_LAYER_TYPES))}")
        out.type = _V1.LayerType.Value(V0_LAYER_TYPES[vtype])
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        target = targets.get(vtype) or targets.get(None)
        if target is None:
            notes.append(f'warning: V0 layer {label}: parameter "{field}" does not '
                         f'apply to type "{vtype}"; ignored (as Caffe does)')
            continue
        param_name, sub, how = target
        param = getattr(out, param_name)
        param.SetInParent()
        value = getattr(v0, field)
        if how == "copy":
            (getattr(param, sub) if sub else param).CopyFrom(value)
        elif how == "add":
            getattr(param, sub).append(value)
        else:
            setattr(param, sub, value)
    return out


def _upgrade_v0(net, notes):
    padded = _fold_v0_padding(net)
    out = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for i, conn in enumerate(padded.layers):
        out.layers.add().CopyFrom(_upgrade_v0_layer(conn, i, notes))
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    folded = len(net.layers) - len(padded.layers)
    extra = f", {folded} padding layer(s) folded into conv/pool pad" if folded else ""
    notes.append(f"upgraded {len(out.layers)} V0 layers (layers {{ layer {{ type: "
                 f'"conv" }} }}) to V1{extra}')
    return out


# ----------------------------------------------------------------------------- V1 data

def _needs_data_upgrade(net) -> bool:
    for layer in net.layers:
        field = _DATA_PARAM_OF.get(layer.type)
        if field and layer.HasField(field):
            param = getattr(layer, field)
            if any(param.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def _upgrade_data_transform(net, notes):
    moved = 0
    for layer in net.layers:
        field = _DATA_PARAM_OF.get(layer.type)
        if field is None:
            continue
        # Caffe's mutable_*_param() marks both messages present, even when empty.
        param = getattr(layer, field)
        param.SetInParent()
        layer.transform_param.SetInParent()
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)
                moved += 1
    notes.append(f"moved {moved} deprecated data-layer transformation field(s) "
                 f"(scale, mean_file, crop_size, mirror) into transform_param")


# ----------------------------------------------------------------------------- V1 -> V2

def _upgrade_v1_layer(v1, index, notes):
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        layer.type = V1_LAYER_TYPES[_V1.LayerType.Name(v1.type)]
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)

    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        # Both enums number STRICT 0 and PERMISSIVE 1.
        spec(i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for field in _V1_PARAM_FIELDS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    if v1.HasField("layer"):
        notes.append(f"warning: V1 layer {_layer_label(v1, index)} also holds a V0 "
                     f"layer; ignored (as Caffe does)")
    return layer


def _upgrade_v1(net, notes):
    if len(net.layer):
        raise UpgradeError(
            "the net defines both 'layer' (current format) and 'layers' (V1 format) "
            "fields; Caffe refuses to upgrade such a net. Expected one format: write "
            "every layer as layer { type: \"Name\" ... }")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    lr = 0
    for i, v1 in enumerate(net.layers):
        out.layer.add().CopyFrom(_upgrade_v1_layer(v1, i, notes))
        lr += bool(len(v1.blobs_lr) or len(v1.weight_decay))
    extra = (f"; blobs_lr/weight_decay of {lr} layer(s) became param {{ lr_mult "
             f"decay_mult }}") if lr else ""
    notes.append(f"upgraded {len(net.layers)} V1 layers (layers {{ type: ENUM }}) to "
                 f'layer {{ type: "Name" }}{extra}')
    return out


# ----------------------------------------------------------------------------- inputs

def _upgrade_input(net, notes):
    n_in = len(net.input)
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.input_param.SetInParent()
        if has_shape and len(net.input_shape) != n_in:
            raise UpgradeError(f"the net declares {n_in} input(s) but "
                               f"{len(net.input_shape)} input_shape(s); expected one "
                               f"input_shape per input")
        if not has_shape and len(net.input_dim) != 4 * n_in:
            raise UpgradeError(f"the net declares {n_in} input(s) and "
                               f"{len(net.input_dim)} input_dim value(s); expected 4 "
                               f"input_dim values (num, channels, height, width) per "
                               f"input, {4 * n_in} in all")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        # The Input layer goes first so that every later layer finds its blobs.
        layers = [caffe_pb2.LayerParameter()] + list(net.layer)
        layers[0].CopyFrom(layer)
        del net.layer[:]
        for item in layers:
            net.layer.add().CopyFrom(item)
        style = "input_shape" if has_shape else "input_dim"
        notes.append(f"turned the deprecated net inputs (input + {style}: "
                     f"{', '.join(net.input)}) into an Input layer named \"input\"")
    else:
        notes.append(f"dropped {n_in} net input name(s) without shapes "
                     f"({', '.join(net.input)}), as Caffe does for legacy caffemodels")
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


# ----------------------------------------------------------------------------- BatchNorm

def _upgrade_batch_norm(net, notes):
    fixed = []
    for i, layer in enumerate(net.layer):
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
            fixed.append(_layer_label(layer, i))
    if fixed:
        shown = ", ".join(fixed[:5]) + (f" and {len(fixed) - 5} more"
                                        if len(fixed) > 5 else "")
        notes.append(f"set lr_mult and decay_mult to 0 in the 3 param specs of "
                     f"{len(fixed)} BatchNorm layer(s) ({shown}): their blobs are "
                     f"statistics, not learned, as Caffe's upgrade does")


# ----------------------------------------------------------------------------- API

def net_needs_upgrade(net) -> bool:
    """Whether ``upgrade_net`` would change anything."""
    return (_needs_v0(net) or len(net.layers) > 0 or len(net.input) > 0
            or any(layer.type == "BatchNorm" and len(layer.param) == 3
                   for layer in net.layer))


def upgrade_net(net):
    """(upgraded copy of a NetParameter, list of notes), as Caffe's UpgradeNetAsNeeded.

    Raises UpgradeError where Caffe refuses (both ``layer`` and ``layers``; V0 nets
    whose padding layers or layer types cannot be converted; inputs without shapes
    for every input).
    """
    notes: list = []
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    if _needs_v0(out):
        out = _upgrade_v0(out, notes)
    if _needs_data_upgrade(out):
        _upgrade_data_transform(out, notes)
    if len(out.layers):
        out = _upgrade_v1(out, notes)
    if len(out.input):
        _upgrade_input(out, notes)
    elif len(out.input_shape) or len(out.input_dim):
        raise UpgradeError(f"the net gives {len(out.input_shape)} input_shape(s) and "
                           f"{len(out.input_dim)} input_dim value(s) but no input "
                           f"names; expected input: \"name\" for each input")
    _upgrade_batch_norm(out, notes)
    return out, notes


def upgrade_solver(solver):
    """(upgraded copy of a SolverParameter, list of notes).

    ``solver_type: ENUM`` becomes ``type: "Name"`` (Caffe's UpgradeSolverAsNeeded).
    Nets given inline (net_param, train_net_param, test_net_param) are upgraded with
    ``upgrade_net`` too, which Caffe does not do but its own examples need (e.g.
    lenet_consolidated_solver.prototxt holds V1 layers).
    """
    notes: list = []
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type"):
            raise UpgradeError("the solver gives both solver_type (deprecated enum) "
                               f'and type ("{out.type}"); expected only type')
        name = caffe_pb2.SolverParameter.SolverType.Name(out.solver_type)
        out.type = _SOLVER_TYPES[name]
        out.ClearField("solver_type")
        notes.append(f'solver_type: {name} became type: "{out.type}"')
    for field in ("net_param", "train_net_param"):
        if out.HasField(field):
            net, net_notes = upgrade_net(getattr(out, field))
            getattr(out, field).CopyFrom(net)
            notes.extend(f"{field}: {note}" for note in net_notes)
    for i, inline in enumerate(out.test_net_param):
        net, net_notes = upgrade_net(inline)
        inline.CopyFrom(net)
        notes.extend(f"test_net_param[{i}]: {note}" for note in net_notes)
    return out, notes


def _looks_binary(path) -> bool:
    if str(path).endswith((".caffemodel", ".binaryproto")):
        return True
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 4  # not just a character cut at the end
    return False


def upgrade_file(src, dst, *, kind="auto"):
    """Upgrade a Caffe file to the current format and write it to ``dst``; the notes.

    ``kind``: "net" (net prototxt), "solver" (solver prototxt), "binary" (a
    .caffemodel, written back in binary), or "auto" to tell them apart: binary by its
    bytes, else whichever of net and solver parses (the one that gets further when
    neither does, for the error). ``src`` may equal ``dst``; the write is atomic.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if kind not in ("auto", "net", "solver", "binary"):
        raise ValueError(f'kind must be "auto", "net", "solver" or "binary", not {kind!r}')
    if kind == "auto":
        try:
            binary = _looks_binary(src)
        except OSError as e:
            raise PrototxtError(f"{src}: cannot read the file: {e.strerror or e}",
                                filename=src) from None
        kind = "binary" if binary else None
    if kind == "binary":
        net, notes = upgrade_net(read_net_binary(src))
        write_net_binary(net, dst)
        return notes
    if kind == "net":
        net, notes = upgrade_net(parse_net(src))
        write_text(net, dst)
        return notes
    if kind == "solver":
        solver, notes = upgrade_solver(parse_solver(src))
        write_text(solver, dst)
        return notes
    try:
        net = parse_net(src)
    except PrototxtError as net_error:
        try:
            solver = parse_solver(src)
        except PrototxtError as solver_error:
            def reach(e):
                return (e.line or 0, e.column or 0)
            raise (solver_error if reach(solver_error) > reach(net_error)
                   else net_error) from None
        solver, notes = upgrade_solver(solver)
        write_text(solver, dst)
        return notes
    net, notes = upgrade_net(net)
    write_text(net, dst)
    return notes
