"""The base exceptions of symnet, defined here so the runtime stands on its own (it runs a
serialised Plan without the rest of symnet); ``symnet.errors`` re-exports them."""


class SymnetError(Exception):
    """Base class of all symnet errors."""


class ShapeError(SymnetError, ValueError):
    """Arguments whose shapes, sizes or layouts do not fit what they are used for."""
