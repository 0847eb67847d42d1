"""The Caffe schema: names, numbers, defaults and wire bytes match Caffe's caffe.proto."""
import pytest

from symnet.formats.proto import caffe_pb2, schema

LAYER_PARAMS = [
    "AccuracyParameter", "ArgMaxParameter", "BatchNormParameter", "BiasParameter",
    "ClipParameter", "ConcatParameter", "ContrastiveLossParameter",
    "ConvolutionParameter", "CropParameter", "DataParameter", "DropoutParameter",
    "DummyDataParameter", "EltwiseParameter", "ELUParameter", "EmbedParameter",
    "ExpParameter", "FlattenParameter", "HDF5DataParameter", "HDF5OutputParameter",
    "HingeLossParameter", "ImageDataParameter", "InfogainLossParameter",
    "InnerProductParameter", "InputParameter", "LogParameter", "LRNParameter",
    "MemoryDataParameter", "MVNParameter", "ParameterParameter", "PoolingParameter",
    "PowerParameter", "PReLUParameter", "PythonParameter", "RecurrentParameter",
    "ReductionParameter", "ReLUParameter", "ReshapeParameter", "ScaleParameter",
    "SigmoidParameter", "SliceParameter", "SoftmaxParameter", "SPPParameter",
    "SwishParameter", "TanHParameter", "ThresholdParameter", "TileParameter",
    "WindowDataParameter",
]
OTHER = ["BlobShape", "BlobProto", "BlobProtoVector", "Datum", "FillerParameter",
         "NetParameter", "SolverParameter", "SolverState", "NetState", "NetStateRule",
         "ParamSpec", "LayerParameter", "TransformationParameter", "LossParameter",
         "V1LayerParameter", "V0LayerParameter"]


@pytest.mark.parametrize("name", LAYER_PARAMS + OTHER)
def test_every_message_is_a_module_level_class(name):
    cls = getattr(caffe_pb2, name)
    assert cls.DESCRIPTOR.full_name == f"caffe.{name}"
    cls()  # instantiable


def test_every_layer_parameter_message_has_a_field_in_layer_parameter():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields
    held = {f.message_type.name for f in fields if f.message_type is not None}
    assert set(LAYER_PARAMS) <= held


def test_file_is_proto2_package_caffe():
    fdp = schema.build_file_descriptor()
    assert fdp.package == "caffe" and fdp.syntax == "proto2"
    assert caffe_pb2.DESCRIPTOR.package == "caffe"


def test_phase_at_module_level():
    assert caffe_pb2.TRAIN == 0 and caffe_pb2.TEST == 1
    assert caffe_pb2.Phase.Name(caffe_pb2.TEST) == "TEST"
    assert caffe_pb2.Phase.Value("TRAIN") == 0


@pytest.mark.parametrize("owner,enum,values", [
    ("PoolingParameter", "PoolMethod", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
    ("PoolingParameter", "RoundMode", {"CEIL": 0, "FLOOR": 1}),
    ("EltwiseParameter", "EltwiseOp", {"PROD": 0, "SUM": 1, "MAX": 2}),
    ("ConvolutionParameter", "Engine", {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}),
    ("FillerParameter", "VarianceNorm", {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2}),
    ("DataParameter", "DB", {"LEVELDB": 0, "LMDB": 1}),
    ("SolverParameter", "SolverMode", {"CPU": 0, "GPU": 1}),
    ("SolverParameter", "SnapshotFormat", {"HDF5": 0, "BINARYPROTO": 1}),
    ("SolverParameter", "SolverType", {"SGD": 0, "NESTEROV": 1, "ADAGRAD": 2,
                                       "RMSPROP": 3, "ADADELTA": 4, "ADAM": 5}),
    ("LossParameter", "NormalizationMode", {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2,
                                            "NONE": 3}),
    ("LRNParameter", "NormRegion", {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}),
    ("ReductionParameter", "ReductionOp", {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4}),
    ("HingeLossParameter", "Norm", {"L1": 1, "L2": 2}),
    ("ParamSpec", "DimCheckMode", {"STRICT": 0, "PERMISSIVE": 1}),
])
def test_nested_enums(owner, enum, values):
    cls = getattr(caffe_pb2, owner)
    wrapper = getattr(cls, enum)
    assert {v: wrapper.Value(v) for v in values} == values
    for name, number in values.items():
        assert getattr(cls, name) == number


def test_v1_layer_types():
    v1 = caffe_pb2.V1LayerParameter
    assert (v1.CONVOLUTION, v1.DATA, v1.POOLING, v1.INNER_PRODUCT, v1.SOFTMAX_LOSS,
            v1.DECONVOLUTION, v1.ABSVAL, v1.THRESHOLD) == (4, 5, 17, 14, 21, 39, 35, 31)
    assert len(v1.LayerType.keys()) == 40


@pytest.mark.parametrize("message,field,number", [
    ("NetParameter", "layer", 100), ("NetParameter", "layers", 2),
    ("NetParameter", "input", 3), ("NetParameter", "input_dim", 4),
    ("NetParameter", "input_shape", 8), ("NetParameter", "state", 6),
    ("LayerParameter", "blobs", 7), ("LayerParameter", "param", 6),
    ("LayerParameter", "include", 8), ("LayerParameter", "transform_param", 100),
    ("LayerParameter", "convolution_param", 106), ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142), ("LayerParameter", "input_param", 143),
    ("LayerParameter", "swish_param", 147), ("LayerParameter", "clip_param", 148),
    ("BlobProto", "data", 5), ("BlobProto", "shape", 7), ("BlobProto", "double_data", 8),
    ("V1LayerParameter", "blobs", 6), ("V1LayerParameter", "blobs_lr", 7),
    ("V1LayerParameter", "weight_decay", 8), ("V1LayerParameter", "include", 32),
    ("V1LayerParameter", "param", 1001), ("V1LayerParameter", "layer", 1),
    ("V0LayerParameter", "blobs", 50), ("SolverParameter", "net_param", 25),
    ("SolverParameter", "solver_type", 30), ("SolverParameter", "weights", 42),
    ("ConvolutionParameter", "dilation", 18), ("PoolingParameter", "round_mode", 13),
])
def test_field_numbers(message, field, number):
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number == number


def test_defaults_as_caffe():
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.FillerParameter().std == 1.0
    assert caffe_pb2.FillerParameter().sparse == -1
    assert caffe_pb2.ConvolutionParameter().bias_term is True
    assert caffe_pb2.ConvolutionParameter().group == 1
    assert caffe_pb2.PoolingParameter().stride == 1
    assert caffe_pb2.LRNParameter().local_size == 5
    assert caffe_pb2.LRNParameter().beta == pytest.approx(0.75)
    assert caffe_pb2.BatchNormParameter().eps == pytest.approx(1e-5)
    assert caffe_pb2.BatchNormParameter().moving_average_fraction == pytest.approx(0.999)
    assert caffe_pb2.ParamSpec().lr_mult == 1.0
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.EltwiseParameter().operation == caffe_pb2.EltwiseParameter.SUM
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.SolverParameter().type == "SGD"
    assert caffe_pb2.SolverParameter().solver_mode == caffe_pb2.SolverParameter.GPU
    assert caffe_pb2.SolverParameter().random_seed == -1
    assert caffe_pb2.SolverParameter().delta == pytest.approx(1e-8)
    assert caffe_pb2.FlattenParameter().end_axis == -1
    assert caffe_pb2.CropParameter().axis == 2
    assert caffe_pb2.WindowDataParameter().crop_mode == "warp"
    assert caffe_pb2.ExpParameter().base == -1.0
    assert caffe_pb2.DataParameter().prefetch == 4
    assert caffe_pb2.ImageDataParameter().batch_size == 1


def test_wire_bytes_match_caffe_numbering():
    net = caffe_pb2.NetParameter(name="a")
    layer = net.layer.add(name="c")
    blob = layer.blobs.add()
    blob.shape.dim.extend([2])
    blob.data.extend([1.0, 2.0])
    # name (1), then layer (100 -> tag 0xa2 0x06) holding name (1) and blobs (7),
    # whose data (5) is packed float and whose shape (7) packs dim (1); fields in
    # number order, as Caffe's C++ serializer writes them.
    expected = bytes.fromhex(
        "0a0161" "a20614" "0a0163" "3a0f" "2a08" "0000803f00000040" "3a030a0102")
    assert net.SerializeToString() == expected
    assert caffe_pb2.NetParameter.FromString(expected) == net


def test_v1_wire_format_reads():
    # layers (2) { name (4) "x", type (5) CONVOLUTION=4, blobs_lr (7) 1.0 unpacked }
    data = bytes.fromhex("120a22017828043d0000803f")
    net = caffe_pb2.NetParameter.FromString(data)
    assert net.layers[0].name == "x"
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert list(net.layers[0].blobs_lr) == [1.0]


def test_unpacked_repeated_as_proto2():
    # proto2 repeated scalars are not packed unless Caffe says so (input_dim is not).
    net = caffe_pb2.NetParameter(input_dim=[1, 3])
    assert net.SerializeToString() == bytes.fromhex("20012003")


def test_required_fields_of_clip():
    clip = caffe_pb2.ClipParameter(min=0)
    assert not clip.IsInitialized()
    clip.max = 6
    assert clip.IsInitialized()
