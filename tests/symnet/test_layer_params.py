"""Layer parameters are checked as Caffe checks them: a value Caffe refuses (a CHECK in
its LayerSetUp / Reshape) is a LayerError naming the layer, its type, the field as the
prototxt spells it, the value found and what is expected; values Caffe takes still
build. Each row's comment gives Caffe's check (BVLC caffe, src/caffe/layers/*.cpp)."""
import math

import numpy as np
import pytest

import symnet as sn
from symnet.layers import LayerError, apply, registry

# data (2, 4, 6, 6); lab (2, 6, 6): one label per prediction along axis 1; small
# (2, 4, 4, 4): the shape bottom of Crop
INPUTS = """
layer { name: "in" type: "Input" top: "data" top: "lab" top: "small"
        input_param { shape { dim: 2 dim: 4 dim: 6 dim: 6 } shape { dim: 2 dim: 6 dim: 6 }
                      shape { dim: 2 dim: 4 dim: 4 dim: 4 } } }
"""


def net_text(type_, params, bottoms=("data",), ntop=1):
    tops = " ".join(f'top: "t{i}"' for i in range(ntop))
    bots = " ".join(f'bottom: "{b}"' for b in bottoms)
    return INPUTS + f'layer {{ name: "bad" type: "{type_}" {bots} {tops} {params} }}\n'


def build(type_, params, bottoms=("data",), ntop=1, phase=sn.TEST):
    return sn.Net(net_text(type_, params, bottoms, ntop), phase, backend="numpy")


CONV = "convolution_param"
POOL = "pooling_param"
WDP = "window_data_param"
TP4 = "transform_param { crop_size: 4 }"

# (type, parameter text, bottoms, number of tops, field, value as printed)
REFUSED = [
    # ------------------------------------------------------------ Convolution
    # CHECK_GT(num_output_, 0)
    ("Convolution", f"{CONV} {{ num_output: 0 kernel_size: 3 }}", 1, 1,
     f"{CONV}.num_output", "0"),
    ("Convolution", f"{CONV} {{ kernel_size: 3 }}", 1, 1, f"{CONV}.num_output", "(not set)"),
    # CHECK_GT(kernel_shape_data[i], 0) "Filter dimensions must be nonzero."
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 0 }}", 1, 1,
     f"{CONV}.kernel_size", "0"),
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 kernel_size: 0 }}", 1, 1,
     f"{CONV}.kernel_size", "[3, 0]"),
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_h: 0 kernel_w: 3 }}", 1, 1,
     f"{CONV}.kernel_h", "0"),
    # CHECK(num_kernel_dims == 1 || num_kernel_dims == num_spatial_axes_)
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 kernel_size: 3 "
     "kernel_size: 3 }", 1, 1, f"{CONV}.kernel_size", "[3, 3, 3]"),
    # CHECK_EQ(0, conv_param.kernel_size_size()) "Either kernel_size or kernel_h/w"
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3 }}",
     1, 1, f"{CONV}.kernel_size", "[3]"),
    # CHECK_GT(stride_data[i], 0) "Stride dimensions must be nonzero."
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 stride: 0 }}", 1, 1,
     f"{CONV}.stride", "0"),
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 stride_h: 0 stride_w: 1 }}",
     1, 1, f"{CONV}.stride_h", "0"),
    # stride_h without stride_w: Caffe reads stride_w() = 0 and fails the check above
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 stride_h: 2 }}", 1, 1,
     f"{CONV}.stride_h", "2"),
    # not checked by Caffe (a uint32); 0 puts every tap on one pixel: refused
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 dilation: 0 }}", 1, 1,
     f"{CONV}.dilation", "0"),
    # CHECK_EQ(channels_ % group_, 0): group 0 divides by zero
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 group: 0 }}", 1, 1,
     f"{CONV}.group", "0"),
    # CHECK_EQ(channels_ % group_, 0) with 4 channels
    ("Convolution", f"{CONV} {{ num_output: 6 kernel_size: 3 group: 3 }}", 1, 1,
     f"{CONV}.group", "3"),
    # CHECK_EQ(num_output_ % group_, 0) "Number of output should be multiples of group."
    ("Convolution", f"{CONV} {{ num_output: 3 kernel_size: 3 group: 2 }}", 1, 1,
     f"{CONV}.group", "2"),
    # top size (6 - 9) / 1 + 1 < 0: Blob::Reshape CHECK_GE(shape[i], 0)
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 9 }}", 1, 1,
     f"{CONV}.kernel_size", "[9, 9]"),
    # dilated kernel 7 on 6: Caffe makes an empty top (size 0); conv2d has always
    # refused a kernel larger than the padded bottom
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 dilation: 3 }}", 1, 1,
     f"{CONV}.kernel_size", "[3, 3]"),
    # channel axis 3 of a 4-d bottom leaves no spatial axis (Caffe would run a 0-d
    # convolution); symnet takes 1, 2 or 3 spatial axes
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 axis: 3 }}", 1, 1,
     f"{CONV}.axis", "3"),
    # CHECK(num_kernel_dims == 1 || num_kernel_dims == num_spatial_axes_): axis 0 makes
    # a 3-d convolution of one item (channels 2, spatial 4x6x6)
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 kernel_size: 3 axis: 0 }}",
     1, 1, f"{CONV}.kernel_size", "[3, 3]"),
    # CHECK_EQ(num_spatial_axes_, 2) "kernel_h & kernel_w can only be used for 2D
    # convolution."
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_h: 3 kernel_w: 3 axis: 0 }}", 1, 1,
     f"{CONV}.kernel_h", "3"),
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 stride_h: 2 stride_w: 2 "
     "axis: 0 }", 1, 1, f"{CONV}.stride_h", "2"),
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 3 pad: 1 pad: 1 axis: 0 }}",
     1, 1, f"{CONV}.pad", "[1, 1]"),
    # 3-d: the depth kernel 7 is beyond the padded depth 4 + 2
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 7 kernel_size: 3 "
     "kernel_size: 3 pad: 1 axis: 0 }", 1, 1, f"{CONV}.kernel_size", "[7, 3, 3]"),
    # ---------------------------------------------------------- Deconvolution
    ("Deconvolution", f"{CONV} {{ num_output: 0 kernel_size: 3 }}", 1, 1,
     f"{CONV}.num_output", "0"),
    ("Deconvolution", f"{CONV} {{ num_output: 4 kernel_size: 3 stride: 0 }}", 1, 1,
     f"{CONV}.stride", "0"),
    # top size (6 - 1) * 1 + 3 - 2 * 9 < 0: Blob::Reshape CHECK_GE(shape[i], 0)
    ("Deconvolution", f"{CONV} {{ num_output: 4 kernel_size: 3 pad: 9 }}", 1, 1,
     f"{CONV}.pad", "[9, 9]"),
    # ---------------------------------------------------------------- Pooling
    # CHECK_GT(kernel_h_, 0) "Filter dimensions cannot be zero."
    ("Pooling", f"{POOL} {{ kernel_size: 0 }}", 1, 1, f"{POOL}.kernel_size", "0"),
    ("Pooling", f"{POOL} {{ kernel_h: 2 kernel_w: 0 }}", 1, 1, f"{POOL}.kernel_w", "0"),
    # CHECK(has_kernel_size() || (has_kernel_h() && has_kernel_w()))
    ("Pooling", f"{POOL} {{ kernel_h: 3 }}", 1, 1, f"{POOL}.kernel_h", "3"),
    ("Pooling", f"{POOL} {{ }}", 1, 1, f"{POOL}.kernel_size", "(not set)"),
    # CHECK(!has_kernel_size() != !(has_kernel_h() && has_kernel_w())) "not both"
    ("Pooling", f"{POOL} {{ kernel_size: 3 kernel_h: 3 kernel_w: 3 }}", 1, 1,
     f"{POOL}.kernel_size", "3"),
    # not checked by Caffe, which divides by the stride (SIGFPE)
    ("Pooling", f"{POOL} {{ kernel_size: 2 stride: 0 }}", 1, 1, f"{POOL}.stride", "0"),
    # CHECK_LT(pad_h_, kernel_h_)
    ("Pooling", f"{POOL} {{ kernel_size: 3 pad: 3 }}", 1, 1, f"{POOL}.pad", "[3, 3]"),
    ("Pooling", f"{POOL} {{ kernel_size: 3 pad_h: 1 pad_w: 5 }}", 1, 1, f"{POOL}.pad",
     "[1, 5]"),
    # "pad is pad OR pad_h and pad_w are required."
    ("Pooling", f"{POOL} {{ kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1 }}", 1, 1,
     f"{POOL}.pad", "1"),
    # "With Global_pooling: true Filter size cannot specified" (even a 0)
    ("Pooling", f"{POOL} {{ global_pooling: true kernel_size: 0 }}", 1, 1,
     f"{POOL}.kernel_size", "0"),
    # "With Global_pooling: true; only pad = 0 and stride = 1"
    ("Pooling", f"{POOL} {{ global_pooling: true stride: 2 }}", 1, 1, f"{POOL}.stride",
     "[2, 2]"),
    ("Pooling", f"{POOL} {{ global_pooling: true pad: 1 }}", 1, 1, f"{POOL}.pad", "[1, 1]"),
    # CHECK(pool == AVE || pool == MAX) "Padding implemented only for average and max
    # pooling."
    ("Pooling", f"{POOL} {{ kernel_size: 2 pad: 1 pool: STOCHASTIC }}", 1, 1, f"{POOL}.pad",
     "[1, 1]"),
    # MaxTopBlobs(): 2 for MAX (the mask), 1 otherwise
    ("Pooling", f"{POOL} {{ kernel_size: 2 pool: AVE }}", 1, 2, f"{POOL}.pool", "'AVE'"),
    ("Pooling", f"{POOL} {{ kernel_size: 2 pool: STOCHASTIC }}", 1, 2, f"{POOL}.pool",
     "'STOCHASTIC'"),
    ("Pooling", f"{POOL} {{ kernel_size: 2 }}", 1, 3, f"{POOL}.pool", "'MAX'"),
    # a window larger than the padded bottom: a top size <= 0 in Caffe
    ("Pooling", f"{POOL} {{ kernel_size: 8 }}", 1, 1, f"{POOL}.kernel_size", "[8, 8]"),
    # ----------------------------------------------------------- InnerProduct
    # Caffe makes an empty top for num_output 0; symnet has always refused it
    ("InnerProduct", "inner_product_param { num_output: 0 }", 1, 1,
     "inner_product_param.num_output", "0"),
    # CanonicalAxisIndex: CHECK_GE(axis_index, -num_axes()), CHECK_LT(axis_index, num_axes())
    ("InnerProduct", "inner_product_param { num_output: 2 axis: 4 }", 1, 1,
     "inner_product_param.axis", "4"),
    ("InnerProduct", "inner_product_param { num_output: 2 axis: -5 }", 1, 1,
     "inner_product_param.axis", "-5"),
    # -------------------------------------------------------------------- LRN
    # CHECK_EQ(size_ % 2, 1) "LRN only supports odd values for local_size"
    ("LRN", "lrn_param { local_size: 4 }", 1, 1, "lrn_param.local_size", "4"),
    ("LRN", "lrn_param { local_size: 0 }", 1, 1, "lrn_param.local_size", "0"),
    # size_ is an int in Caffe: 2^31 + 1 is negative there, and fails the check
    ("LRN", "lrn_param { local_size: 2147483649 }", 1, 1, "lrn_param.local_size",
     "2147483649"),
    # ---------------------------------------------------------------- Dropout
    # DCHECK(threshold_ > 0.), DCHECK(threshold_ < 1.) (debug builds); 1 scales by 1/0
    ("Dropout", "dropout_param { dropout_ratio: 1.0 }", 1, 1,
     "dropout_param.dropout_ratio", "1.0"),
    ("Dropout", "dropout_param { dropout_ratio: -0.5 }", 1, 1,
     "dropout_param.dropout_ratio", "-0.5"),
    # ------------------------------------------------------------ Exp and Log
    # CHECK_GT(base, 0) "base must be strictly positive." unless base == -1
    ("Exp", "exp_param { base: 0 }", 1, 1, "exp_param.base", "0.0"),
    ("Exp", "exp_param { base: -2 }", 1, 1, "exp_param.base", "-2.0"),
    # CHECK(!isinf(log_base)) "Inf result: log(base)"
    ("Exp", "exp_param { base: inf }", 1, 1, "exp_param.base", "inf"),
    ("Log", "log_param { base: -0.5 }", 1, 1, "log_param.base", "-0.5"),
    ("Log", "log_param { base: inf }", 1, 1, "log_param.base", "inf"),
    # CHECK(!isinf(base_scale_)) "Inf result: 1/log(base)"
    ("Log", "log_param { base: 1 }", 1, 1, "log_param.base", "1.0"),
    # not checked: Caffe's outer scale pow(base, shift) is inf, every top value inf or
    # NaN; refused
    ("Exp", "exp_param { base: 10 shift: 1000 }", 1, 1, "exp_param.shift", "1000.0"),
    ("Exp", "exp_param { shift: 1000 }", 1, 1, "exp_param.shift", "1000.0"),
    # ------------------------------------------------------------------ Power
    # not checked: with power * scale == 0 Caffe fills the top with pow(shift, power),
    # here NaN or inf; refused
    ("Power", "power_param { power: 0.5 scale: 0 shift: -1 }", 1, 1, "power_param.shift",
     "-1.0"),
    ("Power", "power_param { power: -1 scale: 0 }", 1, 1, "power_param.shift", "0.0"),
    # ------------------------------------------------------------------ Slice
    # CHECK(!(has_axis() && has_slice_dim())) "Either axis or slice_dim; not both."
    ("Slice", "slice_param { axis: 1 slice_dim: 1 }", 1, 2, "slice_param.slice_dim", "1"),
    # CHECK_LT(slice_axis_, num_axes) "slice_dim out of range."
    ("Slice", "slice_param { slice_dim: 4 }", 1, 2, "slice_param.slice_dim", "4"),
    # CanonicalAxisIndex
    ("Slice", "slice_param { axis: 4 }", 1, 2, "slice_param.axis", "4"),
    # CHECK_EQ(slice_point_.size(), top.size() - 1)
    ("Slice", "slice_param { slice_point: 1 slice_point: 2 }", 1, 2,
     "slice_param.slice_point", "[1, 2]"),
    # CHECK_GT(slice_point_[i], prev)
    ("Slice", "slice_param { slice_point: 0 }", 1, 2, "slice_param.slice_point", "[0]"),
    ("Slice", "slice_param { slice_point: 3 slice_point: 2 }", 1, 3,
     "slice_param.slice_point", "[3, 2]"),
    # the last top would get bottom_slice_axis - prev <= 0 elements
    ("Slice", "slice_param { slice_point: 4 }", 1, 2, "slice_param.slice_point", "[4]"),
    # CHECK_LE(top.size(), bottom_slice_axis)
    ("Slice", "slice_param { slice_point: 1 slice_point: 2 slice_point: 3 "
     "slice_point: 4 }", 1, 5, "slice_param.slice_point", "[1, 2, 3, 4]"),
    # ----------------------------------------------------------------- Concat
    ("Concat", "concat_param { axis: 4 }", 2, 1, "concat_param.axis", "4"),
    ("Concat", "concat_param { concat_dim: 4 }", 2, 1, "concat_param.concat_dim", "4"),
    ("Concat", "concat_param { axis: 1 concat_dim: 1 }", 2, 1, "concat_param.concat_dim",
     "1"),
    # ---------------------------------------------------------------- Reshape
    # CHECK_EQ(inferred_axis_, -1) "new shape contains multiple -1 dims"
    ("Reshape", "reshape_param { shape { dim: -1 dim: -1 } }", 1, 1,
     "reshape_param.shape.dim", "[-1, -1]"),
    # a dim < -1 makes a negative top shape: Blob::Reshape CHECK_GE(shape[i], 0)
    ("Reshape", "reshape_param { shape { dim: -2 dim: -72 } }", 1, 1,
     "reshape_param.shape.dim", "[-2, -72]"),
    # CHECK_GE(num_axes, -1) "num_axes must be >= 0, or -1 for all"
    ("Reshape", "reshape_param { shape { dim: -1 } num_axes: -2 }", 1, 1,
     "reshape_param.num_axes", "-2"),
    # CHECK_LE(start_axis, bottom[0]->num_axes()), CHECK_GE(start_axis, 0)
    ("Reshape", "reshape_param { shape { dim: -1 } axis: 5 }", 1, 1, "reshape_param.axis",
     "5"),
    ("Reshape", "reshape_param { shape { dim: -1 } axis: -6 }", 1, 1, "reshape_param.axis",
     "-6"),
    # CHECK_LE(end_axis, bottom[0]->num_axes()) "end_axis = axis + num_axes is out of range"
    ("Reshape", "reshape_param { shape { dim: -1 } axis: 2 num_axes: 3 }", 1, 1,
     "reshape_param.num_axes", "3"),
    # CHECK_EQ(top[0]->count(), bottom[0]->count())
    ("Reshape", "reshape_param { shape { dim: 5 dim: -1 } }", 1, 1,
     "reshape_param.shape.dim", "[5, -1]"),
    # ------------------------------------------------------------------- Crop
    # CHECK_GE(bottom[0]->shape(i) - crop_offset, bottom[1]->shape(i))
    ("Crop", "crop_param { offset: 3 }", ("data", "small"), 1, "crop_param.offset", "3"),
    # CHECK_EQ(start_axis + offset_size, num_axes) when more than one offset
    ("Crop", "crop_param { offset: 1 offset: 1 offset: 1 }", ("data", "small"), 1,
     "crop_param.offset", "[1, 1, 1]"),
    ("Crop", "crop_param { axis: 4 }", ("data", "small"), 1, "crop_param.axis", "4"),
    # ------------------------------------------------------------------- Tile
    # CHECK(has_tiles()) "Number of tiles must be specified"
    ("Tile", "tile_param { axis: 1 }", 1, 1, "tile_param.tiles", "(not set)"),
    # CHECK_GT(tiles_, 0) "Number of tiles must be positive."
    ("Tile", "tile_param { tiles: 0 }", 1, 1, "tile_param.tiles", "0"),
    ("Tile", "tile_param { tiles: -2 }", 1, 1, "tile_param.tiles", "-2"),
    ("Tile", "tile_param { tiles: 2 axis: -5 }", 1, 1, "tile_param.axis", "-5"),
    # ---------------------------------------------------------------- Eltwise
    # CHECK(coeff_size() == 0 || coeff_size() == bottom.size())
    ("Eltwise", "eltwise_param { coeff: 1 coeff: 2 coeff: 3 }", 2, 1,
     "eltwise_param.coeff", "[1.0, 2.0, 3.0]"),
    # CHECK(!(operation == PROD && coeff_size())) "only takes coefficients for summation"
    ("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", 2, 1,
     "eltwise_param.coeff", "[1.0, 2.0]"),
    # ------------------------------------------------------------------ Embed
    # CHECK_GT(N_, 0) "EmbedLayer num_output must be positive."
    ("Embed", "embed_param { num_output: 0 input_dim: 5 }", 1, 1, "embed_param.num_output",
     "0"),
    # CHECK_GT(K_, 0) "EmbedLayer input_dim must be positive."
    ("Embed", "embed_param { num_output: 3 input_dim: 0 }", 1, 1, "embed_param.input_dim",
     "0"),
    # ----------------------------------------------------------------- ArgMax
    # CHECK_GE(top_k_, 1) "top k must not be less than 1."
    ("ArgMax", "argmax_param { top_k: 0 }", 1, 1, "argmax_param.top_k", "0"),
    # CHECK_GE(bottom[0]->count(1), top_k_): 4 * 6 * 6 = 144 per item
    ("ArgMax", "argmax_param { top_k: 145 }", 1, 1, "argmax_param.top_k", "145"),
    # CHECK_GE(bottom[0]->shape(axis_), top_k_)
    ("ArgMax", "argmax_param { top_k: 5 axis: 1 }", 1, 1, "argmax_param.top_k", "5"),
    ("ArgMax", "argmax_param { axis: 4 }", 1, 1, "argmax_param.axis", "4"),
    # --------------------------------------------------------------- Accuracy
    # CHECK_LE(top_k_, bottom[0]->count() / bottom[1]->count()): 4 classes
    ("Accuracy", "accuracy_param { top_k: 5 }", ("data", "lab"), 1, "accuracy_param.top_k",
     "5"),
    ("Accuracy", "accuracy_param { axis: 4 }", ("data", "lab"), 1, "accuracy_param.axis",
     "4"),
    # ---------------------------------------------------- Softmax and its loss
    ("Softmax", "softmax_param { axis: 4 }", 1, 1, "softmax_param.axis", "4"),
    ("Softmax", "softmax_param { axis: -5 }", 1, 1, "softmax_param.axis", "-5"),
    ("SoftmaxWithLoss", "softmax_param { axis: 4 }", ("data", "lab"), 1,
     "softmax_param.axis", "4"),
    # InfogainLoss: CHECK(!has_normalize()) "normalize is deprecated. use normalization"
    ("InfogainLoss", "loss_param { normalize: true } infogain_loss_param { source: 'x' }",
     ("data", "lab"), 1, "loss_param.normalize", "true"),
    ("InfogainLoss", "infogain_loss_param { axis: 4 }", ("data", "lab", "lab"), 1,
     "infogain_loss_param.axis", "4"),
    # --------------------------------------------------------- Scale and Bias
    # CanonicalAxisIndex; CHECK_GE(num_axes, -1); CHECK_GE(bottom[0]->num_axes(),
    # axis_ + num_axes) "scale blob's shape extends past bottom[0]'s shape"
    ("Scale", "scale_param { axis: 4 }", 1, 1, "scale_param.axis", "4"),
    ("Scale", "scale_param { num_axes: -2 }", 1, 1, "scale_param.num_axes", "-2"),
    ("Scale", "scale_param { axis: 2 num_axes: 3 }", 1, 1, "scale_param.num_axes", "3"),
    ("Bias", "bias_param { axis: -5 }", 1, 1, "bias_param.axis", "-5"),
    ("Bias", "bias_param { num_axes: -3 }", 1, 1, "bias_param.num_axes", "-3"),
    ("Bias", "bias_param { axis: 3 num_axes: 2 }", 1, 1, "bias_param.num_axes", "2"),
    # ---------------------------------------------------------------- Flatten
    # Blob::count(start, end): CHECK_LE(start_axis, end_axis)
    ("Flatten", "flatten_param { axis: 2 end_axis: 1 }", 1, 1, "flatten_param.end_axis",
     "1"),
    ("Flatten", "flatten_param { axis: 4 }", 1, 1, "flatten_param.axis", "4"),
    ("Flatten", "flatten_param { end_axis: -5 }", 1, 1, "flatten_param.end_axis", "-5"),
    # -------------------------------------------------------------- Reduction
    ("Reduction", "reduction_param { axis: 4 }", 1, 1, "reduction_param.axis", "4"),
    # ------------------------------------------------------------------- Clip
    # min and max are required fields of ClipParameter
    ("Clip", "clip_param { min: 0 }", 1, 1, "clip_param.max", "(not set)"),
    # ------------------------------------------------------------- HDF5Output
    # H5Fcreate(file_name) with no name fails: CHECK_GE(file_id_, 0)
    ("HDF5Output", "", ("data", "lab"), 0, "hdf5_output_param.file_name", "(not set)"),
    # ------------------------------------------------------------- WindowData
    # (checked before the window file is read; the source here does not exist)
    # the batch is batch_size windows: 0 gives an empty batch Caffe cannot sample
    ("WindowData", f"{WDP} {{ source: 'w.txt' batch_size: 0 }} {TP4}", (), 2,
     f"{WDP}.batch_size", "0"),
    # CHECK_GT(crop_size, 0), crop_size read from transform_param
    ("WindowData", f"{WDP} {{ source: 'w.txt' batch_size: 2 }}", (), 2,
     "transform_param.crop_size", "(not set)"),
    ("WindowData", f"{WDP} {{ source: 'w.txt' batch_size: 2 crop_size: 4 }}", (), 2,
     "transform_param.crop_size", "(not set)"),
    # num_fg = batch_size * fg_fraction must be a count within the batch
    ("WindowData", f"{WDP} {{ source: 'w.txt' batch_size: 2 fg_fraction: 1.5 }} {TP4}", (),
     2, f"{WDP}.fg_fraction", "1.5"),
    # context_scale = crop / (crop - 2 * context_pad): divides by zero at crop / 2
    ("WindowData", f"{WDP} {{ source: 'w.txt' batch_size: 2 context_pad: 2 }} {TP4}", (), 2,
     f"{WDP}.context_pad", "2"),
    # -------------------------------------------------------------------- SPP
    # pyramid_height: Caffe's Concat gets no bottom with 0 levels
    ("SPP", "spp_param { pyramid_height: 0 }", 1, 1, "spp_param.pyramid_height", "0"),
    # level 3 of a 6x6 bottom: kernel 1, pad 1; PoolingLayer: CHECK_LT(pad_h_, kernel_h_)
    ("SPP", "spp_param { pyramid_height: 4 }", 1, 1, "spp_param.pyramid_height", "4"),
    ("SPP", "spp_param { pyramid_height: 2 pool: STOCHASTIC }", 1, 1, "spp_param.pool",
     "'STOCHASTIC'"),
    # ----------------------------------------------------------------- Im2col
    # CHECK_GT(kernel_shape_data[i], 0) "Filter dimensions must be nonzero."
    ("Im2col", f"{CONV} {{ kernel_size: 0 }}", 1, 1, f"{CONV}.kernel_size", "0"),
    ("Im2col", f"{CONV} {{ }}", 1, 1, f"{CONV}.kernel_size", "[]"),
    # CHECK(num_kernel_dims == 1 || num_kernel_dims == num_spatial_axes_)
    ("Im2col", f"{CONV} {{ kernel_size: 3 kernel_size: 3 kernel_size: 3 }}", 1, 1,
     f"{CONV}.kernel_size", "[3, 3, 3]"),
    # CHECK_EQ(0, conv_param.kernel_size_size()) "Either kernel_size or kernel_h/w"
    ("Im2col", f"{CONV} {{ kernel_size: 3 kernel_h: 3 kernel_w: 3 }}", 1, 1,
     f"{CONV}.kernel_size", "[3]"),
    # CHECK_GT(stride_data[i], 0) "Stride dimensions must be nonzero."
    ("Im2col", f"{CONV} {{ kernel_size: 3 stride: 0 }}", 1, 1, f"{CONV}.stride", "0"),
    # stride_h alone: Caffe reads stride_w() = 0 and fails the check above
    ("Im2col", f"{CONV} {{ kernel_size: 3 stride_h: 2 }}", 1, 1, f"{CONV}.stride_w", "0"),
    # kernel_h & kernel_w can only be used for 2D convolution (axis 2: one spatial axis)
    ("Im2col", f"{CONV} {{ kernel_h: 3 kernel_w: 3 axis: 2 }}", 1, 1, f"{CONV}.kernel_h",
     "3"),
    # CHECK_GE(num_spatial_axes_, 1)
    ("Im2col", f"{CONV} {{ kernel_size: 1 axis: -1 }}", 1, 1, f"{CONV}.axis", "-1"),
    # a top of negative size: Blob::Reshape refuses it
    ("Im2col", f"{CONV} {{ kernel_size: 9 }}", 1, 1, f"{CONV}.kernel_size", "[9, 9]"),
    # -------------------------------------------------------------- Parameter
    # BlobShape dims are int64; Blob::Reshape: CHECK_GE(shape[i], 0)
    ("Parameter", "parameter_param { shape { dim: 2 dim: -1 } }", (), 1,
     "parameter_param.shape.dim", "[2, -1]"),
    # ------------------------------------------------------------------ Filter
    # CHECK_EQ(top.size(), bottom.size() - 1)
    ("Filter", "", ("data", "lab"), 2, "top", "2"),
]


def _row_id(row):
    type_, params = row[0], row[1]
    return f"{type_}-{row[4]}-{params[params.find('{') + 1:].strip(' }')[:40]}"


def _bottoms(spec):
    if isinstance(spec, tuple):
        return spec
    return ("data",) * spec


@pytest.mark.parametrize("row", REFUSED, ids=[_row_id(r) for r in REFUSED])
def test_refused_parameter_names_layer_field_and_value(row):
    type_, params, bottoms, ntop, field, value = row
    with pytest.raises(LayerError) as info:
        build(type_, params, _bottoms(bottoms), ntop)
    msg = str(info.value)
    assert msg.startswith(f"layer 'bad' ({type_}) in <string>: "), msg
    assert field in msg, msg
    assert f"{field} {value}" in msg, msg


# Values only Python can give (the prototxt schema has uint32 or enum fields there):
# layers built with symnet.layers.apply; (type, bottom shapes, kwargs, field, value).
SHAPE = (2, 4, 6, 6)
REFUSED_FROM_PYTHON = [
    ("Convolution", [SHAPE], dict(num_output=-4, kernel_size=[3]),
     f"{CONV}.num_output", "-4"),
    ("Convolution", [SHAPE], dict(num_output=2.5, kernel_size=[3]),
     f"{CONV}.num_output", "2.5"),
    ("Convolution", [SHAPE], dict(num_output=4, kernel_size=[-3]), f"{CONV}.kernel_size",
     "-3"),
    ("Convolution", [SHAPE], dict(num_output=4, kernel_size=[3], stride=[-1]),
     f"{CONV}.stride", "-1"),
    ("Convolution", [SHAPE], dict(num_output=4, kernel_size=[3], pad=[-1]), f"{CONV}.pad",
     "-1"),
    ("Convolution", [SHAPE], dict(num_output=4, kernel_size=[3], pad_h=1, pad_w=-2),
     f"{CONV}.pad_w", "-2"),
    ("Convolution", [SHAPE], dict(num_output=4, kernel_size=[3], dilation=[-1]),
     f"{CONV}.dilation", "-1"),
    ("Convolution", [SHAPE], dict(num_output=4, kernel_size=[3], group=-2),
     f"{CONV}.group", "-2"),
    ("Deconvolution", [SHAPE], dict(num_output=4, kernel_size=[3], dilation=[0]),
     f"{CONV}.dilation", "0"),
    ("Pooling", [SHAPE], dict(kernel_size=3, pad=-1), f"{POOL}.pad", "-1"),
    ("Pooling", [SHAPE], dict(kernel_size=3, stride=-1), f"{POOL}.stride", "-1"),
    ("Pooling", [SHAPE], dict(kernel_size=2, pool="MIN"), f"{POOL}.pool", "'MIN'"),
    ("Pooling", [SHAPE], dict(kernel_size=2, round_mode="UP"), f"{POOL}.round_mode",
     "'UP'"),
    ("InnerProduct", [SHAPE], dict(num_output=-3), "inner_product_param.num_output", "-3"),
    ("LRN", [SHAPE], dict(local_size=-1), "lrn_param.local_size", "-1"),
    ("LRN", [SHAPE], dict(norm_region="ACROSS"), "lrn_param.norm_region", "'ACROSS'"),
    ("Embed", [SHAPE], dict(num_output=3, input_dim=-3), "embed_param.input_dim", "-3"),
    ("Crop", [SHAPE, (2, 4, 4, 4)], dict(offset=[-1]), "crop_param.offset", "[-1]"),
    ("Tile", [SHAPE], dict(tiles=2.5), "tile_param.tiles", "2.5"),
    ("ArgMax", [SHAPE], dict(top_k=-1), "argmax_param.top_k", "-1"),
    ("Slice", [SHAPE], dict(slice_dim=-1), "slice_param.slice_dim", "-1"),
    ("Slice", [SHAPE], dict(slice_point=[1.5]), "slice_param.slice_point", "[1.5]"),
    ("Concat", [SHAPE, SHAPE], dict(concat_dim=-1), "concat_param.concat_dim", "-1"),
    ("Reduction", [SHAPE], dict(operation="MAX"), "reduction_param.operation", "'MAX'"),
    ("Eltwise", [SHAPE, SHAPE], dict(operation="MIN"), "eltwise_param.operation",
     "'MIN'"),
    ("Dropout", [SHAPE], dict(dropout_ratio=math.nan), "dropout_param.dropout_ratio",
     "nan"),
    ("Log", [SHAPE], dict(base=math.nan), "log_param.base", "nan"),
    ("SoftmaxWithLoss", [SHAPE, (2, 6, 6)], dict(normalization="ALL"),
     "loss_param.normalization", "'ALL'"),
    ("SigmoidCrossEntropyLoss", [SHAPE, SHAPE], dict(normalization="ALL"),
     "loss_param.normalization", "'ALL'"),
    ("HingeLoss", [SHAPE, (2,)], dict(norm="L3"), "hinge_loss_param.norm", "'L3'"),
    ("Filter", [(4, 3), (4, 1)], dict(count=5), "count", "5"),
    ("Filter", [(4, 3), (4, 1)], dict(count=0), "count", "0"),
    ("Filter", [(4, 3), (4, 1)], dict(count=1.5), "count", "1.5"),
    ("Parameter", [], dict(shape={"dim": [2.5]}), "parameter_param.shape.dim", "[2.5]"),
]


@pytest.mark.parametrize("row", REFUSED_FROM_PYTHON,
                         ids=[f"{r[0]}-{r[3]}-{r[4]}" for r in REFUSED_FROM_PYTHON])
def test_refused_python_value_names_layer_field_and_value(row):
    type_, shapes, kwargs, field, value = row
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", s) for i, s in enumerate(shapes)]
        with pytest.raises(LayerError) as info:
            apply(type_, *xs, name="bad", ntop=2 if type_ == "Slice" else 1, **kwargs)
    msg = str(info.value)
    assert msg.startswith(f"layer 'bad' ({type_}): "), msg
    assert f"{field} {value}" in msg, msg


# ------------------------------------------------------------------ accepted
# Values at the edge of what Caffe takes build, with the top shape Caffe gives.
ACCEPTED = [
    # pad_h alone: Caffe reads pad_w() = 0 (both default to 0 in the proto)
    ("Convolution", f"{CONV} {{ num_output: 2 kernel_size: 3 pad_h: 1 }}", 1, 1,
     (2, 2, 6, 4)),
    # the dilated kernel as large as the padded bottom: a 1x1 top
    ("Convolution", f"{CONV} {{ num_output: 2 kernel_size: 8 pad: 1 }}", 1, 1,
     (2, 2, 1, 1)),
    ("Convolution", f"{CONV} {{ num_output: 2 kernel_size: 3 dilation: 2 pad: 0 }}", 1, 1,
     (2, 2, 2, 2)),
    ("Convolution", f"{CONV} {{ num_output: 4 kernel_size: 1 group: 4 }}", 1, 1,
     (2, 4, 6, 6)),
    # a deconvolution top of size 0 is an empty blob in Caffe as well
    ("Deconvolution", f"{CONV} {{ num_output: 2 kernel_size: 1 pad: 3 }}", 1, 1,
     (2, 2, 0, 0)),
    # pad = kernel - 1; a kernel larger than the bottom with stride 2 (Caffe's ceil
    # rounding gives one window, clipped to the image)
    ("Pooling", f"{POOL} {{ kernel_size: 3 pad: 2 }}", 1, 1, (2, 4, 8, 8)),
    ("Pooling", f"{POOL} {{ kernel_size: 7 stride: 2 }}", 1, 1, (2, 4, 1, 1)),
    ("Pooling", f"{POOL} {{ global_pooling: true pad: 0 stride: 1 }}", 1, 1, (2, 4, 1, 1)),
    ("InnerProduct", "inner_product_param { num_output: 3 axis: -1 }", 1, 1, (2, 4, 6, 3)),
    ("LRN", "lrn_param { local_size: 1 }", 1, 1, (2, 4, 6, 6)),
    # Caffe DCHECKs ratio > 0 only in debug builds; 0 keeps everything
    ("Dropout", "dropout_param { dropout_ratio: 0 }", 1, 1, (2, 4, 6, 6)),
    ("Exp", "exp_param { base: -1 }", 1, 1, (2, 4, 6, 6)),
    ("Exp", "exp_param { base: 1 }", 1, 1, (2, 4, 6, 6)),
    ("Log", "log_param { base: 0.5 }", 1, 1, (2, 4, 6, 6)),
    ("Exp", "exp_param { base: 10 shift: -1000 }", 1, 1, (2, 4, 6, 6)),
    ("Power", "power_param { power: 0 scale: 0 shift: -1 }", 1, 1, (2, 4, 6, 6)),
    ("Slice", "slice_param { slice_point: 1 slice_point: 2 slice_point: 3 }", 1, 4,
     (2, 1, 6, 6)),
    ("Slice", "slice_param { slice_dim: 3 slice_point: 5 }", 1, 2, (2, 4, 6, 5)),
    ("Concat", "concat_param { axis: -1 }", 2, 1, (2, 4, 6, 12)),
    ("Reshape", "reshape_param { shape { dim: 0 dim: -1 } num_axes: 2 }", 1, 1,
     (2, 4, 6, 6)),
    ("Reshape", "reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 }", 1, 1,
     (2, 4, 6, 6, 1)),
    ("Reshape", "reshape_param { shape { dim: 1 } axis: -5 num_axes: 0 }", 1, 1,
     (1, 2, 4, 6, 6)),
    ("Crop", "crop_param { offset: 2 }", ("data", "small"), 1, (2, 4, 4, 4)),
    ("Crop", "crop_param { axis: 1 offset: 0 offset: 2 offset: 1 }", ("data", "small"), 1,
     (2, 4, 4, 4)),
    ("Tile", "tile_param { tiles: 1 axis: -1 }", 1, 1, (2, 4, 6, 6)),
    ("Eltwise", "eltwise_param { operation: MAX coeff: 2 coeff: 3 }", 2, 1, (2, 4, 6, 6)),
    ("ArgMax", "argmax_param { top_k: 144 }", 1, 1, (2, 1, 144, 1)),
    ("ArgMax", "argmax_param { top_k: 4 axis: -3 }", 1, 1, (2, 4, 6, 6)),
    ("Accuracy", "accuracy_param { top_k: 4 }", ("data", "lab"), 1, ()),
    ("Scale", "scale_param { axis: 0 num_axes: -1 }", 1, 1, (2, 4, 6, 6)),
    ("Flatten", "flatten_param { axis: 2 end_axis: -2 }", 1, 1, (2, 4, 6, 6)),
    ("Softmax", "softmax_param { axis: -4 }", 1, 1, (2, 4, 6, 6)),
    # Caffe checks none of the parameters of these layers (AbsVal, BNLL, Sigmoid, TanH,
    # Split, Silence, EuclideanLoss, MultinomialLogisticLoss and PReLU have none that
    # can be wrong; ContrastiveLoss takes any margin): odd values build
    ("BatchNorm", "batch_norm_param { moving_average_fraction: -1 eps: 0 }", 1, 1,
     (2, 4, 6, 6)),
    ("ELU", "elu_param { alpha: -2 }", 1, 1, (2, 4, 6, 6)),
    ("ReLU", "relu_param { negative_slope: -1 }", 1, 1, (2, 4, 6, 6)),
    ("Threshold", "threshold_param { threshold: -1e30 }", 1, 1, (2, 4, 6, 6)),
    ("MVN", "mvn_param { eps: 0 across_channels: true }", 1, 1, (2, 4, 6, 6)),
    ("Swish", "swish_param { beta: -1 }", 1, 1, (2, 4, 6, 6)),
    ("Clip", "clip_param { min: 2 max: 1 }", 1, 1, (2, 4, 6, 6)),
    ("Power", "power_param { power: -1 scale: 2 shift: -3 }", 1, 1, (2, 4, 6, 6)),
    ("Reduction", "reduction_param { axis: -1 coeff: 0 }", 1, 1, (2, 4, 6)),
    # Im2col: C's division truncates toward zero, so (6 - 7) / 2 + 1 = 1: one window
    # reaching past the bottom (im2col reads 0 there)
    ("Im2col", f"{CONV} {{ kernel_size: 7 stride: 2 }}", 1, 1, (2, 4 * 49, 1, 1)),
    ("Im2col", f"{CONV} {{ kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_w: 1 "
     f"dilation: 2 }}", 1, 1, (2, 24, 2, 4)),
    # SPP: levels of 1, 4 and 16 bins flattened and joined; one level is not flattened
    ("SPP", "spp_param { pyramid_height: 3 pool: AVE }", 1, 1, (2, 4 * 21)),
    ("SPP", "spp_param { pyramid_height: 1 }", 1, 1, (2, 4, 1, 1)),
    ("Parameter", "parameter_param { shape { dim: 3 dim: 1 dim: 2 } }", (), 1, (3, 1, 2)),
]


@pytest.mark.parametrize("row", ACCEPTED, ids=[f"{r[0]}-{r[1]}" for r in ACCEPTED])
def test_edge_values_caffe_takes_build(row):
    type_, params, bottoms, ntop, shape = row
    net = build(type_, params, _bottoms(bottoms), ntop)
    assert net.blobs["t0"].data.shape == shape


def _lrn_reference(x, n, alpha, beta, k, region):
    """Caffe's LRN written out with the window cut at the edges."""
    x = x.astype(np.float64)
    sq, (_, c, h, w) = x * x, x.shape
    pre, out = (n - 1) // 2, np.empty_like(x)
    if region == "ACROSS_CHANNELS":
        for i in range(c):
            s = sq[:, max(0, i - pre):i + pre + 1].sum(1)
            out[:, i] = x[:, i] * (k + alpha / n * s) ** -beta
    else:
        for i in range(h):
            for j in range(w):
                s = sq[:, :, max(0, i - pre):i + pre + 1, max(0, j - pre):j + pre + 1]
                out[:, :, i, j] = x[:, :, i, j] * (1 + alpha * s.sum((2, 3)) / n / n) ** -beta
    return out


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("local_size", [3, 9, 2147483647])
def test_lrn_window_wider_than_the_blob(region, local_size):
    """A local_size past every edge (up to Caffe's int limit) builds without a huge
    padding or window and gives Caffe's values (the divisor stays local_size)."""
    net = build("LRN", f"lrn_param {{ local_size: {local_size} alpha: 2 beta: 0.75 k: 1.5 "
                f"norm_region: {region} }}")
    x = np.random.default_rng(3).standard_normal((2, 4, 6, 6)).astype(np.float32) * 3
    y = net.forward(data=x)["t0"]
    np.testing.assert_allclose(y, _lrn_reference(x, local_size, 2.0, 0.75, 1.5, region),
                               rtol=2e-6, atol=1e-6)


def test_a_layer_error_raised_inside_a_layer_names_it():
    """A LayerError from a layer built inside another (apply) gets the outer layer's
    name too; one that already names the layer is not named twice."""
    @sn.layer("ParamsTestOuter", params=())
    def outer(x):
        """Pooling with a zero kernel, built inside this layer."""
        return apply("Pooling", x, name="inner", kernel_size=0)[0]

    try:
        with sn.graph_scope():
            x = sn.input("x", SHAPE)
            with pytest.raises(LayerError) as info:
                apply("ParamsTestOuter", x, name="outer")
    finally:
        registry._REGISTRY.pop("ParamsTestOuter", None)
    msg = str(info.value)
    assert msg.startswith("layer 'outer' (ParamsTestOuter): layer 'inner' (Pooling): "
                          "pooling_param.kernel_size 0: must be"), msg
    with sn.graph_scope():
        with pytest.raises(LayerError) as info:
            apply("Pooling", sn.input("x", SHAPE), name="p", kernel_size=0)
    assert str(info.value).count("layer 'p'") == 1


def test_an_arithmetic_error_in_a_layer_names_it():
    """A division by zero or an overflow while a layer is built (from its parameters)
    is a LayerError naming the layer and the error, not a bare ZeroDivisionError."""
    @sn.layer("ParamsTestDivide", params=())
    def divide(x, parts=0):
        """x split in ``parts`` equal slices along axis 1 (the first one returned)."""
        return x[:, :x.shape[1] // parts]

    try:
        with sn.graph_scope():
            with pytest.raises(LayerError) as info:
                apply("ParamsTestDivide", sn.input("x", SHAPE), name="d", parts=0)
    finally:
        registry._REGISTRY.pop("ParamsTestDivide", None)
    assert str(info.value).startswith("layer 'd' (ParamsTestDivide): ZeroDivisionError: ")
    assert type(info.value.__cause__) is ZeroDivisionError
