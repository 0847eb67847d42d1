"""Declaring layers: ``@sn.layer("TypeName")`` and the context a layer is built in.

A layer is a function from bottom Tensors (positional) and the layer's prototxt
parameters (keyword arguments with Caffe's names and defaults) to its top Tensors.
Learnable blobs are declared inside it with ``sn.layer_param(shape, filler)``, in
Caffe's blob order; the Net turns them into parameter blobs (shared by
``param { name: }``), and backward is derived from the math.

    @sn.layer("ReLU")
    def relu(x, negative_slope=0.0):
        '''y = max(x, 0) + negative_slope * min(x, 0)'''
        return sn.where(x > 0, x, negative_slope * x)
"""
from __future__ import annotations

import contextlib
import inspect
import re
from dataclasses import dataclass, field

from .. import fillers
from .. import functions as F
from ..errors import GraphError, SymnetError


class LayerError(SymnetError, ValueError):
    """A layer could not be built; the message names the layer and its type."""


@dataclass
class LayerSpec:
    type: str
    fn: object
    params: tuple          # names of LayerParameter fields whose fields become kwargs
    loss: bool             # Caffe's loss layers: top 0 has loss_weight 1 by default
    module: str = ""

    @property
    def doc(self):
        return inspect.getdoc(self.fn) or ""


_REGISTRY: dict = {}


def _default_param_field(type_name):
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", type_name)
    snake = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", snake)
    return snake.lower() + "_param"


def layer(type_name, params=None, loss=False):
    """Register a layer function under a Caffe type name.

    ``params``: the LayerParameter fields whose sub-fields are passed as keyword
    arguments (default: ``<snake_case type>_param``, e.g. ``convolution_param``).
    ``loss``: the layer's first top is a loss (loss_weight 1 unless set).
    """
    if params is None:
        params = (_default_param_field(type_name),)
    elif isinstance(params, str):
        params = (params,)

    def register(fn):
        _REGISTRY[type_name] = LayerSpec(type_name, fn, tuple(params), bool(loss),
                                         getattr(fn, "__module__", ""))
        fn.layer_type = type_name
        return fn
    return register


def get(type_name) -> LayerSpec:
    spec = _REGISTRY.get(type_name)
    if spec is None:
        from difflib import get_close_matches
        near = get_close_matches(type_name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise LayerError(f"unknown layer type '{type_name}'{hint} (register it with "
                         "@symnet.layer, or load its module with layer_modules=[...])")
    return spec


def registered() -> list:
    return sorted(_REGISTRY)


# ------------------------------------------------------------------ building context

@dataclass
class ParamDecl:
    tensor: object
    lr_mult: float = 1.0
    decay_mult: float = 1.0
    share_name: str = ""


@dataclass
class LayerContext:
    """What a layer being built can ask: its name, phase, how many tops, and where
    learnable blobs and state updates go."""
    name: str
    type: str
    phase: str = "TEST"
    ntop: int = 1
    param_specs: list = field(default_factory=list)   # Caffe ParamSpec-like dicts
    make_param: object = None        # callback(ctx, index, shape, filler) -> Tensor
    params: list = field(default_factory=list)        # ParamDecl, in blob order
    updates: list = field(default_factory=list)       # (param Tensor, new value Tensor)
    counter: object = None           # scalar Tensor: the iteration, for random layers
    where: str = ""                  # "layer 'conv1' (Convolution) in file" for errors

    def declare(self, shape, filler):
        i = len(self.params)
        spec = self.param_specs[i] if i < len(self.param_specs) else {}
        if self.make_param is not None:
            t = self.make_param(self, i, tuple(shape), filler)
        else:
            t = F.param(f"{self.name}_{i}", shape, filler=filler)
        self.params.append(ParamDecl(t, spec.get("lr_mult", 1.0), spec.get("decay_mult", 1.0),
                                     spec.get("name", "")))
        return t


_contexts: list = []


@contextlib.contextmanager
def building(ctx: LayerContext):
    _contexts.append(ctx)
    try:
        yield ctx
    finally:
        _contexts.pop()


def context() -> LayerContext:
    """The context of the layer being built (a standalone one outside a Net)."""
    if not _contexts:
        raise GraphError("symnet.layer_context() is only available while a layer is built")
    return _contexts[-1]


def layer_param(shape, filler=None):
    """Declare the layer's next learnable blob (Caffe order) with a filler; returns its
    Tensor. Inside a Net it becomes a parameter blob with lr_mult/decay_mult and
    sharing from the layer's ``param {}`` entries."""
    if _contexts:
        return _contexts[-1].declare(shape, fillers.get(filler))
    return F.param(f"param_{len(shape)}d", shape, filler=fillers.get(filler))


def state_update(param, value):
    """Declare that running the layer in training writes ``value`` into ``param``
    (BatchNorm's running statistics); the Net writes it back after each forward."""
    if value.shape != param.shape:
        raise GraphError(f"state update of {param.label()}: value shape {value.shape} "
                         f"differs from {param.shape}")
    context().updates.append((param, value))


def check_options(spec: LayerSpec, options: dict, where: str):
    """Options given by name (a symbolic layer's param_str) must be ones the layer takes,
    and an option whose default is a boolean takes only true or false."""
    sig = inspect.signature(spec.fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    named = [n for n, p in sig.parameters.items()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and
             p.default is not p.empty]
    for key, value in options.items():
        if key not in named:
            raise LayerError(f"{where}: param_str sets '{key}', which layer type "
                             f"'{spec.type}' does not take; it takes "
                             f"{', '.join(named) or 'no options'}")
        if isinstance(sig.parameters[key].default, bool) and not isinstance(value, bool):
            raise LayerError(f"{where}: param_str option '{key}' is {value!r}; expected "
                             "true or false")


def call(spec: LayerSpec, ctx: LayerContext, bottoms, kwargs):
    """Build a layer: call its function with the kwargs it accepts.

    An error the function raises (a parameter it refuses, e.g. ``ValueError("
    convolution_param.stride 0: must be >= 1")``, or a shape that does not fit) becomes
    a LayerError that starts with the layer's name and type (and file, in a Net)."""
    sig = inspect.signature(spec.fn)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    chosen = {k: v for k, v in kwargs.items() if accepts_any or k in sig.parameters}
    where = ctx.where or f"layer '{ctx.name}' ({ctx.type})"
    with building(ctx):
        try:
            tops = spec.fn(*bottoms, **chosen)
        except LayerError as e:
            if f"layer '{ctx.name}' ({ctx.type})" in str(e):
                raise
            # raised by the layer itself, or by a layer it builds inside (apply):
            # name this one as well
            raise LayerError(f"{where}: {e}") from e
        except (SymnetError, ValueError, TypeError) as e:
            raise LayerError(f"{where}: {e}") from e
        except ArithmeticError as e:
            # a division by zero or an overflow from the layer's parameters
            raise LayerError(f"{where}: {type(e).__name__}: {e}") from e
    if not isinstance(tops, (tuple, list)):
        tops = (tops,)
    return list(tops)


def apply(type_name, *bottoms, name=None, phase="TEST", ntop=1, param_specs=(),
          counter=None, **params):
    """Build one layer outside a Net on Tensors ``bottoms`` with prototxt-style keyword
    parameters (as the layer function takes them). Returns (tops, context); learnable
    blobs are Params named ``<name>_<index>``."""
    spec = get(type_name)
    ctx = LayerContext(name or type_name.lower(), type_name, phase, ntop,
                       [dict(p) for p in param_specs], None, counter=counter)
    return call(spec, ctx, list(bottoms), params), ctx
