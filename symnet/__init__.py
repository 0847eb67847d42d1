"""symnet: a symbolic graph compiler for neural networks that emits fused CUDA and C
kernels and runs Caffe networks.

    import numpy as np, symnet as sn
    x = sn.input("x", (2, 3))
    f = sn.function([x], [sn.sigmoid(x).sum()], backend="numpy")
"""
from . import fillers
from .autodiff import grad, vjp
from .errors import (GradientError, GraphError, ShapeError, SymnetError,
                     UnsupportedFunctionError)
from .function import Function, default_backend, function
from .functions import (abs, add, argmax, as_tensor, avg_pool2d, broadcast_to, clip,
                        concat, constant, conv2d, conv_transpose2d, cos, div, elementwise,
                        eq, erf, exp, flatten, gather, ge, gt, input, le, log, lt, matmul,
                        max, max_pool2d, maximum, mean, min, minimum, mul, ne, neg, ones,
                        pad, param, pool2d, pow, reshape, rsqrt, set_seed, sigmoid, sign, sin,
                        softplus, split, sqrt, stop_gradient, sub, sum, sum_to_shape, tanh, topk, transpose,
                        uniform, where, window_sum, zeros)
from .check import check_layer
from .gradcheck import gradcheck
from .graph import Graph, Tensor, default_graph, graph_scope
from .layers import context as layer_context
from .layers import layer, layer_param, state_update
from .net import TEST, TRAIN, Net
from .solver import get_solver

__version__ = "0.1.0"
