"""Exception types of symnet.

Every error says what was found and what was expected, and names the op, layer,
file and line where there is one.
"""
from .runtime.errors import ShapeError, SymnetError


class StateError(SymnetError, RuntimeError):
    """An object used in a state that does not allow it (a closed net)."""


class GraphError(SymnetError, ValueError):
    """A graph is malformed: mixed graphs, missing inputs, bad arguments."""


class UnsupportedFunctionError(SymnetError, ValueError):
    """A sympy function has no printing or evaluation rule."""


class GradientError(SymnetError, ValueError):
    """A gradient cannot be derived, or a gradient check failed."""
