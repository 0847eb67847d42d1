"""Symbolic layers used from prototxt by type name and through type: "Python"."""
import symnet as sn


@sn.layer("TestSquarePlus")
def square_plus(x, offset=1.0):
    """y = x^2 + offset"""
    return x * x + offset


@sn.layer("TestAffine")
def affine(x, init=0.5):
    """y = w[c] * x + b[c], learnable per-channel w and b"""
    c = x.shape[1]
    w = sn.layer_param((c,), {"type": "constant", "value": init})
    b = sn.layer_param((c,), {"type": "constant", "value": 0.1})
    return x * w.reshape(1, c, 1, 1) + b.reshape(1, c, 1, 1)


@sn.layer("TestMaybeNegate")
def maybe_negate(x, negate=False):
    """y = -x when negate, else x"""
    return -x if negate else x * 1.0
