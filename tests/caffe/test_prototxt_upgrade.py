"""Upgrading old nets and solvers as Caffe's UpgradeNetAsNeeded does."""
import pathlib

import numpy as np
import pytest

from symnet.formats.proto import caffe_pb2
from symnet.formats.prototxt import (PrototxtError, array_to_blob, parse_net,
                                     parse_solver, read_net_binary, to_text,
                                     write_net_binary)
from symnet.formats.upgrade import (UpgradeError, net_needs_upgrade, upgrade_file,
                                    upgrade_net, upgrade_solver)

MODELS = pathlib.Path(__file__).parents[1] / "data" / "models"

V1_NET = """
name: "V1Net"
layers {
  name: "mnist" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" backend: LMDB batch_size: 64 scale: 0.00390625
               mirror: true }
  include { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "w_shared" blob_share_mode: PERMISSIVE
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "relu1" type: RELU bottom: "pool1" top: "pool1"
         relu_param { negative_slope: 0.1 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1" blobs_lr: 1
         inner_product_param { num_output: 10 } }
layers { name: "drop" type: DROPOUT bottom: "ip1" top: "ip1"
         dropout_param { dropout_ratio: 0.3 } exclude { phase: TEST stage: "x" } }
layers { name: "accuracy" type: ACCURACY bottom: "ip1" bottom: "label" top: "accuracy"
         include { phase: TEST } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss"
         loss_weight: 2 loss_param { ignore_label: 255 } }
layers { name: "el" type: ELTWISE bottom: "a" bottom: "b" top: "c"
         eltwise_param { operation: MAX } }
layers { name: "misc" type: SIGMOID_CROSS_ENTROPY_LOSS }
layers { name: "abs" type: ABSVAL } layers { name: "split" type: SPLIT }
layers { name: "deconv" type: DECONVOLUTION } layers { name: "h5" type: HDF5_DATA }
"""

V2_NET = """
name: "V1Net"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 mirror: true }
  data_param { source: "train_lmdb" backend: LMDB batch_size: 64 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { name: "w_shared" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1"
        relu_param { negative_slope: 0.1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" param { lr_mult: 1 }
        inner_product_param { num_output: 10 } }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1"
        exclude { phase: TEST stage: "x" } dropout_param { dropout_ratio: 0.3 } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
        include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss"
        loss_weight: 2 loss_param { ignore_label: 255 } }
layer { name: "el" type: "Eltwise" bottom: "a" bottom: "b" top: "c"
        eltwise_param { operation: MAX } }
layer { name: "misc" type: "SigmoidCrossEntropyLoss" }
layer { name: "abs" type: "AbsVal" } layer { name: "split" type: "Split" }
layer { name: "deconv" type: "Deconvolution" } layer { name: "h5" type: "HDF5Data" }
"""


def test_v1_upgrade_equals_hand_written_v2():
    up, notes = upgrade_net(parse_net(V1_NET))
    assert up == parse_net(V2_NET), to_text(up)
    assert any("V1" in n for n in notes) and any("transform_param" in n for n in notes)


def test_upgrade_does_not_change_its_argument():
    v1 = parse_net(V1_NET)
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(v1)
    upgrade_net(v1)
    assert v1 == copy


def test_current_net_is_unchanged():
    net = parse_net(V2_NET)
    assert not net_needs_upgrade(net)
    up, notes = upgrade_net(net)
    assert up == net and notes == []


@pytest.mark.parametrize("old,new", [
    ("mnist_v1/lenet_train_test", "bvlc_mnist/lenet_train_test"),
    ("mnist_v1/lenet", "bvlc_mnist/lenet"),
    ("cifar10_v1/cifar10_quick", "bvlc_cifar10/cifar10_quick"),
    ("caffenet_v1/deploy", "bvlc_caffenet/deploy"),
    ("mnist_input_shape/lenet", "bvlc_mnist/lenet"),
])
def test_corpus_v1_files_upgrade_to_their_current_versions(old, new):
    a, _ = upgrade_net(parse_net(MODELS / f"{old}.prototxt"))
    b, _ = upgrade_net(parse_net(MODELS / f"{new}.prototxt"))
    # Caffe names the layer made from input fields "input"; the current files "data".
    if a.layer[0].type == "Input":
        assert a.layer[0].name == "input"
        a.layer[0].name = b.layer[0].name
    assert a == b


def test_input_dim_becomes_first_input_layer():
    net = parse_net("""
        input: "data" input_dim: 10 input_dim: 3 input_dim: 227 input_dim: 227
        input: "im_info" input_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" }
    """)
    up, notes = upgrade_net(net)
    assert len(up.input) == len(up.input_dim) == len(up.input_shape) == 0
    first = up.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input",
                                                         ["data", "im_info"])
    assert [list(s.dim) for s in first.input_param.shape] == [[10, 3, 227, 227],
                                                             [1, 3, 1, 1]]
    assert up.layer[1].name == "conv"
    assert any("Input layer" in n for n in notes)


def test_input_shape_becomes_input_layer():
    up, _ = upgrade_net(parse_net('input: "x" input_shape { dim: 4 dim: 7 }'))
    assert up == parse_net('layer { name: "input" type: "Input" top: "x" '
                           'input_param { shape { dim: 4 dim: 7 } } }')


def test_input_without_shape_is_dropped():
    up, notes = upgrade_net(parse_net('input: "data" layer { name: "a" }'))
    assert len(up.input) == 0 and len(up.layer) == 1 and notes


@pytest.mark.parametrize("text,match", [
    ('input: "a" input_dim: 1 input_dim: 2', "4 input_dim"),
    ('input: "a" input: "b" input_shape { dim: 1 }', "input_shape"),
    ("input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4", "no input names"),
])
def test_inconsistent_inputs_are_clear_errors(text, match):
    with pytest.raises(UpgradeError, match=match):
        upgrade_net(parse_net(text))


def test_both_layer_and_layers_is_refused():
    with pytest.raises(UpgradeError, match="both 'layer'"):
        upgrade_net(parse_net('layer { name: "a" } layers { name: "b" type: RELU }'))
    assert issubclass(UpgradeError, PrototxtError)


def test_batch_norm_params_frozen_as_caffe():
    net = parse_net("""
        layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 }
                param { lr_mult: 1 decay_mult: 3 name: "keep" } }
        layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
    """)
    up, notes = upgrade_net(net)
    assert [(p.lr_mult, p.decay_mult) for p in up.layer[0].param] == [(0, 0)] * 3
    assert up.layer[0].param[2].name == "keep"
    assert up.layer[1].param[0].lr_mult == 1
    assert any("BatchNorm" in n for n in notes)


def test_v0_net_upgrade():
    v0 = parse_net("""
        name: "v0"
        input: "data" input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32
        layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
        layers { layer { name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 1
                         group: 2 biasterm: false weight_filler { type: "gaussian" std: 0.01 }
                         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
                 bottom: "pad1" top: "conv1" }
        layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
        layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 }
                 bottom: "conv1" top: "pool1" }
        layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 }
                 bottom: "pool1" top: "norm1" }
        layers { layer { name: "fc" type: "innerproduct" num_output: 10 }
                 bottom: "norm1" top: "fc" }
        layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.4 }
                 bottom: "fc" top: "fc" }
        layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
    """)
    up, notes = upgrade_net(v0)
    expected = parse_net("""
        name: "v0"
        layer { name: "input" type: "Input" top: "data"
                input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
                convolution_param { num_output: 8 bias_term: false pad: 2 kernel_size: 5
                                    group: 2 stride: 1
                                    weight_filler { type: "gaussian" std: 0.01 } } }
        layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
        layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
                pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
        layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
                lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
        layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
                inner_product_param { num_output: 10 } }
        layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc"
                dropout_param { dropout_ratio: 0.4 } }
        layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
    """)
    assert up == expected, to_text(up)
    assert any("V0" in n and "padding" in n for n in notes)


def test_v0_data_layer_gets_transform_param():
    v0 = parse_net("""layers { layer { name: "d" type: "data" source: "db" batchsize: 8
                                       meanfile: "mean.binaryproto" cropsize: 227
                                       mirror: true scale: 0.5 } top: "data" }""")
    up, _ = upgrade_net(v0)
    assert up == parse_net("""layer { name: "d" type: "Data" top: "data"
        transform_param { scale: 0.5 mirror: true crop_size: 227
                          mean_file: "mean.binaryproto" }
        data_param { source: "db" batch_size: 8 } }""")


def test_v0_problems():
    with pytest.raises(UpgradeError, match="unknown V0 layer type"):
        upgrade_net(parse_net('layers { layer { name: "x" type: "warp" } }'))
    with pytest.raises(UpgradeError, match="no earlier layer"):
        upgrade_net(parse_net('layers { layer { name: "x" type: "relu" } bottom: "nope" }'))
    up, notes = upgrade_net(parse_net(
        'layers { layer { name: "r" type: "relu" num_output: 3 } }'))
    assert up.layer[0].type == "ReLU" and any("num_output" in n for n in notes)


def test_solver_type_upgrade():
    solver, notes = upgrade_solver(parse_solver("solver_type: ADAM base_lr: 0.1"))
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert notes
    for enum, name in [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                       ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta")]:
        assert upgrade_solver(parse_solver(f"solver_type: {enum}"))[0].type == name
    with pytest.raises(UpgradeError, match="both"):
        upgrade_solver(parse_solver('solver_type: SGD type: "Adam"'))
    same, notes = upgrade_solver(parse_solver('type: "Adam" net: "x.prototxt"'))
    assert same == parse_solver('type: "Adam" net: "x.prototxt"') and notes == []


def test_solver_inline_v1_net_upgraded():
    solver = parse_solver(MODELS / "bvlc_mnist" / "lenet_consolidated_solver.prototxt")
    up, notes = upgrade_solver(solver)
    assert len(up.net_param.layers) == 0
    types = [layer.type for layer in up.net_param.layer]
    assert types[0] == "Data" and "Convolution" in types and "SoftmaxWithLoss" in types
    assert any(n.startswith("net_param:") for n in notes)


def test_upgrade_file_net_and_solver(tmp_path):
    dst = tmp_path / "new.prototxt"
    notes = upgrade_file(MODELS / "caffenet_v1" / "deploy.prototxt", dst)
    assert notes
    text = dst.read_text()
    assert "layers {" not in text and 'type: "Convolution"' in text
    assert parse_net(dst) == upgrade_net(parse_net(MODELS / "caffenet_v1/deploy.prototxt"))[0]
    src = tmp_path / "solver.prototxt"
    src.write_text("net: 'a.prototxt'\nsolver_type: NESTEROV\nbase_lr: 0.1\n")
    upgrade_file(src, src)
    assert parse_solver(src).type == "Nesterov"


def test_upgrade_file_binary(tmp_path):
    net = parse_net('layers { name: "ip" type: INNER_PRODUCT blobs_lr: 1 }')
    net.layers[0].blobs.append(array_to_blob(np.ones((2, 2), np.float32)))
    src, dst = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    write_net_binary(net, src)
    upgrade_file(src, dst)
    back = read_net_binary(dst)
    assert back.layer[0].type == "InnerProduct" and len(back.layer[0].blobs) == 1


def test_upgrade_file_reports_the_better_error(tmp_path):
    src = tmp_path / "bad.prototxt"
    src.write_text('base_lr: 0.1\nmomentum: 0.9\nlr_polcy: "step"\n')
    with pytest.raises(PrototxtError, match=r'bad.prototxt:3:1:.*did you mean "lr_policy"'):
        upgrade_file(src, tmp_path / "out.prototxt")
