"""The op families of the graph. Each op: arity, shape inference, vjp, NumPy semantics."""
from .base import Op, Input, Param, Constant, Leaf
from .elementwise import Elementwise
from .reduce import Reduce
from .layout import Reshape, Transpose, Slice, SliceGrad, Concat, Pad, StopGradient
from .contraction import (MatMul, ConvParams, Conv2d, ConvTranspose2d, ConvWeightGrad,
                          Im2col, Col2im)
from .window import (PoolParams, Pool2d, MaxPoolGrad, MaxPoolSelect, AvePoolGrad, WindowSum,
                     LRN)
from .index import Gather, GatherGrad, ArgTopK, RandomUniform
from .python import PythonTop, PythonGrad

__all__ = [
    "Op", "Input", "Param", "Constant", "Leaf", "Elementwise", "Reduce", "Reshape",
    "Transpose", "Slice", "SliceGrad", "Concat", "Pad", "StopGradient", "MatMul", "ConvParams", "Conv2d",
    "ConvTranspose2d", "ConvWeightGrad", "Im2col", "Col2im", "PoolParams", "Pool2d",
    "MaxPoolGrad", "MaxPoolSelect", "AvePoolGrad", "WindowSum", "LRN", "Gather", "GatherGrad",
    "ArgTopK", "RandomUniform", "PythonTop", "PythonGrad",
]
