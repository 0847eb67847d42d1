"""Caffe's protobuf schema as Python data, and the descriptor built from it.

symnet does not ship Caffe's ``caffe.proto``; this table restates the message types
of BVLC Caffe (master, 2020) with the same message names, field names, field numbers,
types, labels, packing and defaults, so that binary ``.caffemodel`` /
``.binaryproto`` files and prototxt text are interchangeable with Caffe's.

Table format::

    MESSAGES[name] = (fields, enums)
    fields: [(label, type, field name, number, default), ...]
        label   "opt" | "rep" | "req" | "pck" (repeated, packed)
        type    a scalar type ("int32", "float", ...), a message name, or an enum
                name ("Phase", or "Owner.Enum" for a nested enum)
        default None, or the Python value (enum defaults by value name)
    enums: {enum name: [(value name, number), ...]}   (nested in that message)

``TOP_ENUMS`` holds the file-level enums. ``build_file_descriptor()`` turns the table
into a ``FileDescriptorProto`` (package ``caffe``, proto2), and ``message_classes()``
registers it in a private descriptor pool and returns the generated classes.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

PACKAGE = "caffe"
FILE_NAME = "symnet/formats/proto/caffe.proto"

_ENGINE = {"Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)]}
_POOL_METHOD = [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)]

TOP_ENUMS = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
}

MESSAGES: dict = {
    "BlobShape": ([
        ("pck", "int64", "dim", 1, None),
    ], {}),
    "BlobProto": ([
        ("opt", "BlobShape", "shape", 7, None),
        ("pck", "float", "data", 5, None),
        ("pck", "float", "diff", 6, None),
        ("pck", "double", "double_data", 8, None),
        ("pck", "double", "double_diff", 9, None),
        ("opt", "int32", "num", 1, 0),
        ("opt", "int32", "channels", 2, 0),
        ("opt", "int32", "height", 3, 0),
        ("opt", "int32", "width", 4, 0),
    ], {}),
    "BlobProtoVector": ([
        ("rep", "BlobProto", "blobs", 1, None),
    ], {}),
    "Datum": ([
        ("opt", "int32", "channels", 1, None),
        ("opt", "int32", "height", 2, None),
        ("opt", "int32", "width", 3, None),
        ("opt", "bytes", "data", 4, None),
        ("opt", "int32", "label", 5, None),
        ("rep", "float", "float_data", 6, None),
        ("opt", "bool", "encoded", 7, False),
    ], {}),
    "FillerParameter": ([
        ("opt", "string", "type", 1, "constant"),
        ("opt", "float", "value", 2, 0.0),
        ("opt", "float", "min", 3, 0.0),
        ("opt", "float", "max", 4, 1.0),
        ("opt", "float", "mean", 5, 0.0),
        ("opt", "float", "std", 6, 1.0),
        ("opt", "int32", "sparse", 7, -1),
        ("opt", "FillerParameter.VarianceNorm", "variance_norm", 8, "FAN_IN"),
    ], {"VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)]}),
    "NetParameter": ([
        ("opt", "string", "name", 1, None),
        ("rep", "string", "input", 3, None),
        ("rep", "BlobShape", "input_shape", 8, None),
        ("rep", "int32", "input_dim", 4, None),
        ("opt", "bool", "force_backward", 5, False),
        ("opt", "NetState", "state", 6, None),
        ("opt", "bool", "debug_info", 7, False),
        ("rep", "LayerParameter", "layer", 100, None),
        ("rep", "V1LayerParameter", "layers", 2, None),
    ], {}),
    "SolverParameter": ([
        ("opt", "string", "net", 24, None),
        ("opt", "NetParameter", "net_param", 25, None),
        ("opt", "string", "train_net", 1, None),
        ("rep", "string", "test_net", 2, None),
        ("opt", "NetParameter", "train_net_param", 21, None),
        ("rep", "NetParameter", "test_net_param", 22, None),
        ("opt", "NetState", "train_state", 26, None),
        ("rep", "NetState", "test_state", 27, None),
        ("rep", "int32", "test_iter", 3, None),
        ("opt", "int32", "test_interval", 4, 0),
        ("opt", "bool", "test_compute_loss", 19, False),
        ("opt", "bool", "test_initialization", 32, True),
        ("opt", "float", "base_lr", 5, None),
        ("opt", "int32", "display", 6, None),
        ("opt", "int32", "average_loss", 33, 1),
        ("opt", "int32", "max_iter", 7, None),
        ("opt", "int32", "iter_size", 36, 1),
        ("opt", "string", "lr_policy", 8, None),
        ("opt", "float", "gamma", 9, None),
        ("opt", "float", "power", 10, None),
        ("opt", "float", "momentum", 11, None),
        ("opt", "float", "weight_decay", 12, None),
        ("opt", "string", "regularization_type", 29, "L2"),
        ("opt", "int32", "stepsize", 13, None),
        ("rep", "int32", "stepvalue", 34, None),
        ("opt", "float", "clip_gradients", 35, -1.0),
        ("opt", "int32", "snapshot", 14, 0),
        ("opt", "string", "snapshot_prefix", 15, None),
        ("opt", "bool", "snapshot_diff", 16, False),
        ("opt", "SolverParameter.SnapshotFormat", "snapshot_format", 37, "BINARYPROTO"),
        ("opt", "SolverParameter.SolverMode", "solver_mode", 17, "GPU"),
        ("opt", "int32", "device_id", 18, 0),
        ("opt", "int64", "random_seed", 20, -1),
        ("opt", "string", "type", 40, "SGD"),
        ("opt", "float", "delta", 31, 1e-8),
        ("opt", "float", "momentum2", 39, 0.999),
        ("opt", "float", "rms_decay", 38, 0.99),
        ("opt", "bool", "debug_info", 23, False),
        ("opt", "bool", "snapshot_after_train", 28, True),
        ("opt", "SolverParameter.SolverType", "solver_type", 30, "SGD"),
        ("opt", "bool", "layer_wise_reduce", 41, True),
        ("rep", "string", "weights", 42, None),
    ], {
        "SnapshotFormat": [("HDF5", 0), ("BINARYPROTO", 1)],
        "SolverMode": [("CPU", 0), ("GPU", 1)],
        "SolverType": [("SGD", 0), ("NESTEROV", 1), ("ADAGRAD", 2), ("RMSPROP", 3),
                       ("ADADELTA", 4), ("ADAM", 5)],
    }),
    "SolverState": ([
        ("opt", "int32", "iter", 1, None),
        ("opt", "string", "learned_net", 2, None),
        ("rep", "BlobProto", "history", 3, None),
        ("opt", "int32", "current_step", 4, 0),
    ], {}),
    "NetState": ([
        ("opt", "Phase", "phase", 1, "TEST"),
        ("opt", "int32", "level", 2, 0),
        ("rep", "string", "stage", 3, None),
    ], {}),
    "NetStateRule": ([
        ("opt", "Phase", "phase", 1, None),
        ("opt", "int32", "min_level", 2, None),
        ("opt", "int32", "max_level", 3, None),
        ("rep", "string", "stage", 4, None),
        ("rep", "string", "not_stage", 5, None),
    ], {}),
    "ParamSpec": ([
        ("opt", "string", "name", 1, None),
        ("opt", "ParamSpec.DimCheckMode", "share_mode", 2, None),
        ("opt", "float", "lr_mult", 3, 1.0),
        ("opt", "float", "decay_mult", 4, 1.0),
    ], {"DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)]}),
    "LayerParameter": ([
        ("opt", "string", "name", 1, None),
        ("opt", "string", "type", 2, None),
        ("rep", "string", "bottom", 3, None),
        ("rep", "string", "top", 4, None),
        ("opt", "Phase", "phase", 10, None),
        ("rep", "float", "loss_weight", 5, None),
        ("rep", "ParamSpec", "param", 6, None),
        ("rep", "BlobProto", "blobs", 7, None),
        ("rep", "bool", "propagate_down", 11, None),
        ("rep", "NetStateRule", "include", 8, None),
        ("rep", "NetStateRule", "exclude", 9, None),
        ("opt", "TransformationParameter", "transform_param", 100, None),
        ("opt", "LossParameter", "loss_param", 101, None),
        ("opt", "AccuracyParameter", "accuracy_param", 102, None),
        ("opt", "ArgMaxParameter", "argmax_param", 103, None),
        ("opt", "BatchNormParameter", "batch_norm_param", 139, None),
        ("opt", "BiasParameter", "bias_param", 141, None),
        ("opt", "ClipParameter", "clip_param", 148, None),
        ("opt", "ConcatParameter", "concat_param", 104, None),
        ("opt", "ContrastiveLossParameter", "contrastive_loss_param", 105, None),
        ("opt", "ConvolutionParameter", "convolution_param", 106, None),
        ("opt", "CropParameter", "crop_param", 144, None),
        ("opt", "DataParameter", "data_param", 107, None),
        ("opt", "DropoutParameter", "dropout_param", 108, None),
        ("opt", "DummyDataParameter", "dummy_data_param", 109, None),
        ("opt", "EltwiseParameter", "eltwise_param", 110, None),
        ("opt", "ELUParameter", "elu_param", 140, None),
        ("opt", "EmbedParameter", "embed_param", 137, None),
        ("opt", "ExpParameter", "exp_param", 111, None),
        ("opt", "FlattenParameter", "flatten_param", 135, None),
        ("opt", "HDF5DataParameter", "hdf5_data_param", 112, None),
        ("opt", "HDF5OutputParameter", "hdf5_output_param", 113, None),
        ("opt", "HingeLossParameter", "hinge_loss_param", 114, None),
        ("opt", "ImageDataParameter", "image_data_param", 115, None),
        ("opt", "InfogainLossParameter", "infogain_loss_param", 116, None),
        ("opt", "InnerProductParameter", "inner_product_param", 117, None),
        ("opt", "InputParameter", "input_param", 143, None),
        ("opt", "LogParameter", "log_param", 134, None),
        ("opt", "LRNParameter", "lrn_param", 118, None),
        ("opt", "MemoryDataParameter", "memory_data_param", 119, None),
        ("opt", "MVNParameter", "mvn_param", 120, None),
        ("opt", "ParameterParameter", "parameter_param", 145, None),
        ("opt", "PoolingParameter", "pooling_param", 121, None),
        ("opt", "PowerParameter", "power_param", 122, None),
        ("opt", "PReLUParameter", "prelu_param", 131, None),
        ("opt", "PythonParameter", "python_param", 130, None),
        ("opt", "RecurrentParameter", "recurrent_param", 146, None),
        ("opt", "ReductionParameter", "reduction_param", 136, None),
        ("opt", "ReLUParameter", "relu_param", 123, None),
        ("opt", "ReshapeParameter", "reshape_param", 133, None),
        ("opt", "ScaleParameter", "scale_param", 142, None),
        ("opt", "SigmoidParameter", "sigmoid_param", 124, None),
        ("opt", "SoftmaxParameter", "softmax_param", 125, None),
        ("opt", "SPPParameter", "spp_param", 132, None),
        ("opt", "SliceParameter", "slice_param", 126, None),
        ("opt", "SwishParameter", "swish_param", 147, None),
        ("opt", "TanHParameter", "tanh_param", 127, None),
        ("opt", "ThresholdParameter", "threshold_param", 128, None),
        ("opt", "TileParameter", "tile_param", 138, None),
        ("opt", "WindowDataParameter", "window_data_param", 129, None),
    ], {}),
    "TransformationParameter": ([
        ("opt", "float", "scale", 1, 1.0),
        ("opt", "bool", "mirror", 2, False),
        ("opt", "uint32", "crop_size", 3, 0),
        ("opt", "string", "mean_file", 4, None),
        ("rep", "float", "mean_value", 5, None),
        ("opt", "bool", "force_color", 6, False),
        ("opt", "bool", "force_gray", 7, False),
    ], {}),
    "LossParameter": ([
        ("opt", "int32", "ignore_label", 1, None),
        ("opt", "LossParameter.NormalizationMode", "normalization", 3, "VALID"),
        ("opt", "bool", "normalize", 2, None),
    ], {"NormalizationMode": [("FULL", 0), ("VALID", 1), ("BATCH_SIZE", 2),
                              ("NONE", 3)]}),
    "AccuracyParameter": ([
        ("opt", "uint32", "top_k", 1, 1),
        ("opt", "int32", "axis", 2, 1),
        ("opt", "int32", "ignore_label", 3, None),
    ], {}),
    "ArgMaxParameter": ([
        ("opt", "bool", "out_max_val", 1, False),
        ("opt", "uint32", "top_k", 2, 1),
        ("opt", "int32", "axis", 3, None),
    ], {}),
    "ClipParameter": ([
        ("req", "float", "min", 1, None),
        ("req", "float", "max", 2, None),
    ], {}),
    "ConcatParameter": ([
        ("opt", "int32", "axis", 2, 1),
        ("opt", "uint32", "concat_dim", 1, 1),
    ], {}),
    "BatchNormParameter": ([
        ("opt", "bool", "use_global_stats", 1, None),
        ("opt", "float", "moving_average_fraction", 2, 0.999),
        ("opt", "float", "eps", 3, 1e-5),
    ], {}),
    "BiasParameter": ([
        ("opt", "int32", "axis", 1, 1),
        ("opt", "int32", "num_axes", 2, 1),
        ("opt", "FillerParameter", "filler", 3, None),
    ], {}),
    "ContrastiveLossParameter": ([
        ("opt", "float", "margin", 1, 1.0),
        ("opt", "bool", "legacy_version", 2, False),
    ], {}),
    "ConvolutionParameter": ([
        ("opt", "uint32", "num_output", 1, None),
        ("opt", "bool", "bias_term", 2, True),
        ("rep", "uint32", "pad", 3, None),
        ("rep", "uint32", "kernel_size", 4, None),
        ("rep", "uint32", "stride", 6, None),
        ("rep", "uint32", "dilation", 18, None),
        ("opt", "uint32", "pad_h", 9, 0),
        ("opt", "uint32", "pad_w", 10, 0),
        ("opt", "uint32", "kernel_h", 11, None),
        ("opt", "uint32", "kernel_w", 12, None),
        ("opt", "uint32", "stride_h", 13, None),
        ("opt", "uint32", "stride_w", 14, None),
        ("opt", "uint32", "group", 5, 1),
        ("opt", "FillerParameter", "weight_filler", 7, None),
        ("opt", "FillerParameter", "bias_filler", 8, None),
        ("opt", "ConvolutionParameter.Engine", "engine", 15, "DEFAULT"),
        ("opt", "int32", "axis", 16, 1),
        ("opt", "bool", "force_nd_im2col", 17, False),
    ], dict(_ENGINE)),
    "CropParameter": ([
        ("opt", "int32", "axis", 1, 2),
        ("rep", "uint32", "offset", 2, None),
    ], {}),
    "DataParameter": ([
        ("opt", "string", "source", 1, None),
        ("opt", "uint32", "batch_size", 4, None),
        ("opt", "uint32", "rand_skip", 7, 0),
        ("opt", "DataParameter.DB", "backend", 8, "LEVELDB"),
        ("opt", "float", "scale", 2, 1.0),
        ("opt", "string", "mean_file", 3, None),
        ("opt", "uint32", "crop_size", 5, 0),
        ("opt", "bool", "mirror", 6, False),
        ("opt", "bool", "force_encoded_color", 9, False),
        ("opt", "uint32", "prefetch", 10, 4),
    ], {"DB": [("LEVELDB", 0), ("LMDB", 1)]}),
    "DropoutParameter": ([
        ("opt", "float", "dropout_ratio", 1, 0.5),
    ], {}),
    "DummyDataParameter": ([
        ("rep", "FillerParameter", "data_filler", 1, None),
        ("rep", "BlobShape", "shape", 6, None),
        ("rep", "uint32", "num", 2, None),
        ("rep", "uint32", "channels", 3, None),
        ("rep", "uint32", "height", 4, None),
        ("rep", "uint32", "width", 5, None),
    ], {}),
    "EltwiseParameter": ([
        ("opt", "EltwiseParameter.EltwiseOp", "operation", 1, "SUM"),
        ("rep", "float", "coeff", 2, None),
        ("opt", "bool", "stable_prod_grad", 3, True),
    ], {"EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)]}),
    "ELUParameter": ([
        ("opt", "float", "alpha", 1, 1.0),
    ], {}),
    "EmbedParameter": ([
        ("opt", "uint32", "num_output", 1, None),
        ("opt", "uint32", "input_dim", 2, None),
        ("opt", "bool", "bias_term", 3, True),
        ("opt", "FillerParameter", "weight_filler", 4, None),
        ("opt", "FillerParameter", "bias_filler", 5, None),
    ], {}),
    "ExpParameter": ([
        ("opt", "float", "base", 1, -1.0),
        ("opt", "float", "scale", 2, 1.0),
        ("opt", "float", "shift", 3, 0.0),
    ], {}),
    "FlattenParameter": ([
        ("opt", "int32", "axis", 1, 1),
        ("opt", "int32", "end_axis", 2, -1),
    ], {}),
    "HDF5DataParameter": ([
        ("opt", "string", "source", 1, None),
        ("opt", "uint32", "batch_size", 2, None),
        ("opt", "bool", "shuffle", 3, False),
    ], {}),
    "HDF5OutputParameter": ([
        ("opt", "string", "file_name", 1, None),
    ], {}),
    "HingeLossParameter": ([
        ("opt", "HingeLossParameter.Norm", "norm", 1, "L1"),
    ], {"Norm": [("L1", 1), ("L2", 2)]}),
    "ImageDataParameter": ([
        ("opt", "string", "source", 1, None),
        ("opt", "uint32", "batch_size", 4, 1),
        ("opt", "uint32", "rand_skip", 7, 0),
        ("opt", "bool", "shuffle", 8, False),
        ("opt", "uint32", "new_height", 9, 0),
        ("opt", "uint32", "new_width", 10, 0),
        ("opt", "bool", "is_color", 11, True),
        ("opt", "float", "scale", 2, 1.0),
        ("opt", "string", "mean_file", 3, None),
        ("opt", "uint32", "crop_size", 5, 0),
        ("opt", "bool", "mirror", 6, False),
        ("opt", "string", "root_folder", 12, ""),
    ], {}),
    "InfogainLossParameter": ([
        ("opt", "string", "source", 1, None),
        ("opt", "int32", "axis", 2, 1),
    ], {}),
    "InnerProductParameter": ([
        ("opt", "uint32", "num_output", 1, None),
        ("opt", "bool", "bias_term", 2, True),
        ("opt", "FillerParameter", "weight_filler", 3, None),
        ("opt", "FillerParameter", "bias_filler", 4, None),
        ("opt", "int32", "axis", 5, 1),
        ("opt", "bool", "transpose", 6, False),
    ], {}),
    "InputParameter": ([
        ("rep", "BlobShape", "shape", 1, None),
    ], {}),
    "LogParameter": ([
        ("opt", "float", "base", 1, -1.0),
        ("opt", "float", "scale", 2, 1.0),
        ("opt", "float", "shift", 3, 0.0),
    ], {}),
    "LRNParameter": ([
        ("opt", "uint32", "local_size", 1, 5),
        ("opt", "float", "alpha", 2, 1.0),
        ("opt", "float", "beta", 3, 0.75),
        ("opt", "LRNParameter.NormRegion", "norm_region", 4, "ACROSS_CHANNELS"),
        ("opt", "float", "k", 5, 1.0),
        ("opt", "LRNParameter.Engine", "engine", 6, "DEFAULT"),
    ], {"NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)], **_ENGINE}),
    "MemoryDataParameter": ([
        ("opt", "uint32", "batch_size", 1, None),
        ("opt", "uint32", "channels", 2, None),
        ("opt", "uint32", "height", 3, None),
        ("opt", "uint32", "width", 4, None),
    ], {}),
    "MVNParameter": ([
        ("opt", "bool", "normalize_variance", 1, True),
        ("opt", "bool", "across_channels", 2, False),
        ("opt", "float", "eps", 3, 1e-9),
    ], {}),
    "ParameterParameter": ([
        ("opt", "BlobShape", "shape", 1, None),
    ], {}),
    "PoolingParameter": ([
        ("opt", "PoolingParameter.PoolMethod", "pool", 1, "MAX"),
        ("opt", "uint32", "pad", 4, 0),
        ("opt", "uint32", "pad_h", 9, 0),
        ("opt", "uint32", "pad_w", 10, 0),
        ("opt", "uint32", "kernel_size", 2, None),
        ("opt", "uint32", "kernel_h", 5, None),
        ("opt", "uint32", "kernel_w", 6, None),
        ("opt", "uint32", "stride", 3, 1),
        ("opt", "uint32", "stride_h", 7, None),
        ("opt", "uint32", "stride_w", 8, None),
        ("opt", "PoolingParameter.Engine", "engine", 11, "DEFAULT"),
        ("opt", "bool", "global_pooling", 12, False),
        ("opt", "PoolingParameter.RoundMode", "round_mode", 13, "CEIL"),
    ], {"PoolMethod": _POOL_METHOD, **_ENGINE,
        "RoundMode": [("CEIL", 0), ("FLOOR", 1)]}),
    "PowerParameter": ([
        ("opt", "float", "power", 1, 1.0),
        ("opt", "float", "scale", 2, 1.0),
        ("opt", "float", "shift", 3, 0.0),
    ], {}),
    "PythonParameter": ([
        ("opt", "string", "module", 1, None),
        ("opt", "string", "layer", 2, None),
        ("opt", "string", "param_str", 3, ""),
        ("opt", "bool", "share_in_parallel", 4, False),
    ], {}),
    "RecurrentParameter": ([
        ("opt", "uint32", "num_output", 1, 0),
        ("opt", "FillerParameter", "weight_filler", 2, None),
        ("opt", "FillerParameter", "bias_filler", 3, None),
        ("opt", "bool", "debug_info", 4, False),
        ("opt", "bool", "expose_hidden", 5, False),
    ], {}),
    "ReductionParameter": ([
        ("opt", "ReductionParameter.ReductionOp", "operation", 1, "SUM"),
        ("opt", "int32", "axis", 2, 0),
        ("opt", "float", "coeff", 3, 1.0),
    ], {"ReductionOp": [("SUM", 1), ("ASUM", 2), ("SUMSQ", 3), ("MEAN", 4)]}),
    "ReLUParameter": ([
        ("opt", "float", "negative_slope", 1, 0.0),
        ("opt", "ReLUParameter.Engine", "engine", 2, "DEFAULT"),
    ], dict(_ENGINE)),
    "ReshapeParameter": ([
        ("opt", "BlobShape", "shape", 1, None),
        ("opt", "int32", "axis", 2, 0),
        ("opt", "int32", "num_axes", 3, -1),
    ], {}),
    "ScaleParameter": ([
        ("opt", "int32", "axis", 1, 1),
        ("opt", "int32", "num_axes", 2, 1),
        ("opt", "FillerParameter", "filler", 3, None),
        ("opt", "bool", "bias_term", 4, False),
        ("opt", "FillerParameter", "bias_filler", 5, None),
    ], {}),
    "SigmoidParameter": ([
        ("opt", "SigmoidParameter.Engine", "engine", 1, "DEFAULT"),
    ], dict(_ENGINE)),
    "SliceParameter": ([
        ("opt", "int32", "axis", 3, 1),
        ("rep", "uint32", "slice_point", 2, None),
        ("opt", "uint32", "slice_dim", 1, 1),
    ], {}),
    "SoftmaxParameter": ([
        ("opt", "SoftmaxParameter.Engine", "engine", 1, "DEFAULT"),
        ("opt", "int32", "axis", 2, 1),
    ], dict(_ENGINE)),
    "SwishParameter": ([
        ("opt", "float", "beta", 1, 1.0),
    ], {}),
    "TanHParameter": ([
        ("opt", "TanHParameter.Engine", "engine", 1, "DEFAULT"),
    ], dict(_ENGINE)),
    "TileParameter": ([
        ("opt", "int32", "axis", 1, 1),
        ("opt", "int32", "tiles", 2, None),
    ], {}),
    "ThresholdParameter": ([
        ("opt", "float", "threshold", 1, 0.0),
    ], {}),
    "WindowDataParameter": ([
        ("opt", "string", "source", 1, None),
        ("opt", "float", "scale", 2, 1.0),
        ("opt", "string", "mean_file", 3, None),
        ("opt", "uint32", "batch_size", 4, None),
        ("opt", "uint32", "crop_size", 5, 0),
        ("opt", "bool", "mirror", 6, False),
        ("opt", "float", "fg_threshold", 7, 0.5),
        ("opt", "float", "bg_threshold", 8, 0.5),
        ("opt", "float", "fg_fraction", 9, 0.25),
        ("opt", "uint32", "context_pad", 10, 0),
        ("opt", "string", "crop_mode", 11, "warp"),
        ("opt", "bool", "cache_images", 12, False),
        ("opt", "string", "root_folder", 13, ""),
    ], {}),
    "SPPParameter": ([
        ("opt", "uint32", "pyramid_height", 1, None),
        ("opt", "SPPParameter.PoolMethod", "pool", 2, "MAX"),
        ("opt", "SPPParameter.Engine", "engine", 6, "DEFAULT"),
    ], {"PoolMethod": _POOL_METHOD, **_ENGINE}),
    "PReLUParameter": ([
        ("opt", "FillerParameter", "filler", 1, None),
        ("opt", "bool", "channel_shared", 2, False),
    ], {}),
    # The layer format used before February 2015 (`layers { type: CONVOLUTION }`).
    "V1LayerParameter": ([
        ("rep", "string", "bottom", 2, None),
        ("rep", "string", "top", 3, None),
        ("opt", "string", "name", 4, None),
        ("rep", "NetStateRule", "include", 32, None),
        ("rep", "NetStateRule", "exclude", 33, None),
        ("opt", "V1LayerParameter.LayerType", "type", 5, None),
        ("rep", "BlobProto", "blobs", 6, None),
        ("rep", "string", "param", 1001, None),
        ("rep", "V1LayerParameter.DimCheckMode", "blob_share_mode", 1002, None),
        ("rep", "float", "blobs_lr", 7, None),
        ("rep", "float", "weight_decay", 8, None),
        ("rep", "float", "loss_weight", 35, None),
        ("opt", "AccuracyParameter", "accuracy_param", 27, None),
        ("opt", "ArgMaxParameter", "argmax_param", 23, None),
        ("opt", "ConcatParameter", "concat_param", 9, None),
        ("opt", "ContrastiveLossParameter", "contrastive_loss_param", 40, None),
        ("opt", "ConvolutionParameter", "convolution_param", 10, None),
        ("opt", "DataParameter", "data_param", 11, None),
        ("opt", "DropoutParameter", "dropout_param", 12, None),
        ("opt", "DummyDataParameter", "dummy_data_param", 26, None),
        ("opt", "EltwiseParameter", "eltwise_param", 24, None),
        ("opt", "ExpParameter", "exp_param", 41, None),
        ("opt", "HDF5DataParameter", "hdf5_data_param", 13, None),
        ("opt", "HDF5OutputParameter", "hdf5_output_param", 14, None),
        ("opt", "HingeLossParameter", "hinge_loss_param", 29, None),
        ("opt", "ImageDataParameter", "image_data_param", 15, None),
        ("opt", "InfogainLossParameter", "infogain_loss_param", 16, None),
        ("opt", "InnerProductParameter", "inner_product_param", 17, None),
        ("opt", "LRNParameter", "lrn_param", 18, None),
        ("opt", "MemoryDataParameter", "memory_data_param", 22, None),
        ("opt", "MVNParameter", "mvn_param", 34, None),
        ("opt", "PoolingParameter", "pooling_param", 19, None),
        ("opt", "PowerParameter", "power_param", 21, None),
        ("opt", "ReLUParameter", "relu_param", 30, None),
        ("opt", "SigmoidParameter", "sigmoid_param", 38, None),
        ("opt", "SoftmaxParameter", "softmax_param", 39, None),
        ("opt", "SliceParameter", "slice_param", 31, None),
        ("opt", "TanHParameter", "tanh_param", 37, None),
        ("opt", "ThresholdParameter", "threshold_param", 25, None),
        ("opt", "WindowDataParameter", "window_data_param", 20, None),
        ("opt", "TransformationParameter", "transform_param", 36, None),
        ("opt", "LossParameter", "loss_param", 42, None),
        ("opt", "V0LayerParameter", "layer", 1, None),
    ], {
        "LayerType": [
            ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2),
            ("CONCAT", 3), ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5),
            ("DECONVOLUTION", 39), ("DROPOUT", 6), ("DUMMY_DATA", 32),
            ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8),
            ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11),
            ("IMAGE_DATA", 12), ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15),
            ("MEMORY_DATA", 29), ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34),
            ("POOLING", 17), ("POWER", 26), ("RELU", 18), ("SIGMOID", 19),
            ("SIGMOID_CROSS_ENTROPY_LOSS", 27), ("SILENCE", 36), ("SOFTMAX", 20),
            ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23),
            ("WINDOW_DATA", 24), ("THRESHOLD", 31),
        ],
        "DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    }),
    # The layer format of Caffe's first releases (`layers { layer { type: "conv" } }`).
    "V0LayerParameter": ([
        ("opt", "string", "name", 1, None),
        ("opt", "string", "type", 2, None),
        ("opt", "uint32", "num_output", 3, None),
        ("opt", "bool", "biasterm", 4, True),
        ("opt", "FillerParameter", "weight_filler", 5, None),
        ("opt", "FillerParameter", "bias_filler", 6, None),
        ("opt", "uint32", "pad", 7, 0),
        ("opt", "uint32", "kernelsize", 8, None),
        ("opt", "uint32", "group", 9, 1),
        ("opt", "uint32", "stride", 10, 1),
        ("opt", "V0LayerParameter.PoolMethod", "pool", 11, "MAX"),
        ("opt", "float", "dropout_ratio", 12, 0.5),
        ("opt", "uint32", "local_size", 13, 5),
        ("opt", "float", "alpha", 14, 1.0),
        ("opt", "float", "beta", 15, 0.75),
        ("opt", "float", "k", 22, 1.0),
        ("opt", "string", "source", 16, None),
        ("opt", "float", "scale", 17, 1.0),
        ("opt", "string", "meanfile", 18, None),
        ("opt", "uint32", "batchsize", 19, None),
        ("opt", "uint32", "cropsize", 20, 0),
        ("opt", "bool", "mirror", 21, False),
        ("rep", "BlobProto", "blobs", 50, None),
        ("rep", "float", "blobs_lr", 51, None),
        ("rep", "float", "weight_decay", 52, None),
        ("opt", "uint32", "rand_skip", 53, 0),
        ("opt", "float", "det_fg_threshold", 54, 0.5),
        ("opt", "float", "det_bg_threshold", 55, 0.5),
        ("opt", "float", "det_fg_fraction", 56, 0.25),
        ("opt", "uint32", "det_context_pad", 58, 0),
        ("opt", "string", "det_crop_mode", 59, "warp"),
        ("opt", "int32", "new_num", 60, 0),
        ("opt", "int32", "new_channels", 61, 0),
        ("opt", "int32", "new_height", 62, 0),
        ("opt", "int32", "new_width", 63, 0),
        ("opt", "bool", "shuffle_images", 64, False),
        ("opt", "uint32", "concat_dim", 65, 1),
        ("opt", "HDF5OutputParameter", "hdf5_output_param", 1001, None),
    ], {"PoolMethod": _POOL_METHOD}),
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT,
    "int64": _F.TYPE_INT64, "uint64": _F.TYPE_UINT64, "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}
_LABELS = {"opt": _F.LABEL_OPTIONAL, "rep": _F.LABEL_REPEATED,
           "pck": _F.LABEL_REPEATED, "req": _F.LABEL_REQUIRED}


def _enum_names() -> set:
    names = set(TOP_ENUMS)
    for owner, (_fields, enums) in MESSAGES.items():
        names.update(f"{owner}.{e}" for e in enums)
    return names


def _default_text(value) -> str:
    """A default value as FieldDescriptorProto.default_value spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _add_enum(container, name, values):
    enum = container.add(name=name)
    for value_name, number in values:
        enum.value.add(name=value_name, number=number)


def build_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto of the table above: package ``caffe``, syntax proto2."""
    enum_names = _enum_names()
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE,
                                             syntax="proto2")
    for name, values in TOP_ENUMS.items():
        _add_enum(fdp.enum_type, name, values)
    for msg_name, (fields, enums) in MESSAGES.items():
        msg = fdp.message_type.add(name=msg_name)
        for enum_name, values in enums.items():
            _add_enum(msg.enum_type, enum_name, values)
        for label, ftype, fname, number, default in fields:
            field = msg.field.add(name=fname, number=number, label=_LABELS[label])
            if ftype in _SCALARS:
                field.type = _SCALARS[ftype]
            elif ftype in enum_names:
                field.type = _F.TYPE_ENUM
                field.type_name = f".{PACKAGE}.{ftype}"
            elif ftype in MESSAGES:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{ftype}"
            else:  # pragma: no cover - a typo in the table
                raise ValueError(f"{msg_name}.{fname}: unknown type {ftype!r}")
            if label == "pck":
                field.options.packed = True
            if default is not None:
                field.default_value = _default_text(default)
    return fdp


def _message_class(descriptor):
    from google.protobuf import message_factory
    get = getattr(message_factory, "GetMessageClass", None)
    if get is not None:  # protobuf >= 4.22 (and the only way from 5.x on)
        return get(descriptor)
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(
        descriptor)  # pragma: no cover - protobuf 4.21


_POOL = None
_CLASSES = None


def pool() -> descriptor_pool.DescriptorPool:
    """The private descriptor pool that holds the caffe schema."""
    message_classes()
    return _POOL


def message_classes() -> dict:
    """{message name: generated class} for every message of the schema (cached)."""
    global _POOL, _CLASSES
    if _CLASSES is None:
        p = descriptor_pool.DescriptorPool()
        p.AddSerializedFile(build_file_descriptor().SerializeToString())
        classes = {name: _message_class(p.FindMessageTypeByName(f"{PACKAGE}.{name}"))
                   for name in MESSAGES}
        _POOL, _CLASSES = p, classes
    return _CLASSES
