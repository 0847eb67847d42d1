"""Index arithmetic for kernels: where each broadcast operand lives for a flat index.

A kernel iterates a space of dims; each dim has a role, the flat loop variable that
walks it (``i`` for elementwise kernels; ``o`` and ``r`` for the kept and reduced dims
of a reduction). Operands are contiguous tensors broadcast into the space. Dims of
size 1 are dropped and neighbouring dims with the same role and the same broadcast
pattern in every operand are merged, so a per-channel vector in an NCHW space costs
one division and one modulo, and a same-shape operand costs nothing.
"""
from __future__ import annotations

import math


class Space:
    def __init__(self, shape, roles, operand_shapes):
        """``shape``/``roles``: the space's dims; ``operand_shapes``: shapes broadcastable
        to ``shape`` (right-aligned, NumPy rules)."""
        shape, roles = list(shape), list(roles)
        flags = []
        for s in operand_shapes:
            s = (1,) * (len(shape) - len(s)) + tuple(s)
            flags.append([a == b for a, b in zip(s, shape)])
        dims = []   # [size, role, [flag per operand]]
        for d, size in enumerate(shape):
            if size == 1:
                continue
            f = [fl[d] for fl in flags]
            if dims and dims[-1][1] == roles[d] and dims[-1][2] == f:
                dims[-1][0] *= size
            else:
                dims.append([size, roles[d], f])
        self.dims = dims
        self.n_operands = len(operand_shapes)

    def size(self, role):
        return math.prod(d[0] for d in self.dims if d[1] == role)

    def coord(self, k) -> str:
        """C expression for the coordinate along merged dim k."""
        size, role, _ = self.dims[k]
        same = [j for j, d in enumerate(self.dims) if d[1] == role]
        inner = math.prod(self.dims[j][0] for j in same if j > k)
        text = role if inner == 1 else f"({role} / {inner}L)"
        if k != same[0]:
            text = f"({text} % {size}L)"
        return text

    def offset(self, operand) -> str:
        """C expression for the element offset of operand number ``operand``.

        Runs of neighbouring dims that share a role and are all present in the operand
        are addressed as one coordinate, so a full-size operand reads at ``i``.
        """
        runs = []     # [first dim, last dim] of each run present in the operand
        for k, (_, role, flags) in enumerate(self.dims):
            if not flags[operand]:
                continue
            if runs and runs[-1][1] == k - 1 and self.dims[runs[-1][0]][1] == role:
                runs[-1][1] = k
            else:
                runs.append([k, k])
        terms, stride = [], 1
        for first, last in reversed(runs):
            size = math.prod(self.dims[j][0] for j in range(first, last + 1))
            c = self._run_coord(first, last, size)
            terms.append(c if stride == 1 else f"{c} * {stride}L")
            stride *= size
        return " + ".join(reversed(terms)) if terms else "0"

    def _run_coord(self, first, last, size):
        role = self.dims[first][1]
        same = [j for j, d in enumerate(self.dims) if d[1] == role]
        inner = math.prod(self.dims[j][0] for j in same if j > last)
        text = role if inner == 1 else f"({role} / {inner}L)"
        if first != same[0]:
            text = f"({text} % {size}L)"
        return text


SPLIT_MIN = 16     # the shortest contiguous run worth its own inner loop


def split_inner(shape, roles, operand_shapes, role, inner_role):
    """Roles with the innermost merged dim of ``role`` renamed ``inner_role``, and that
    dim's size; (None, 0) when ``role`` is one merged dim already or its inner run is
    shorter than SPLIT_MIN. Walking the run in an inner loop of its own makes every
    operand's offset there affine in the inner variable (broadcast operands become
    loop-invariant), which the C compiler vectorises without gathers or divisions."""
    space = Space(shape, roles, operand_shapes)
    mine = [d for d in space.dims if d[1] == role]
    if len(mine) < 2 or mine[-1][0] < SPLIT_MIN:
        return None, 0
    size, left, out = mine[-1][0], mine[-1][0], list(roles)
    for d in reversed(range(len(shape))):
        if left == 1:
            break
        if roles[d] == role and shape[d] != 1:
            out[d] = inner_role
            left //= shape[d]
    return out, size


def coords_of(var: str, shape) -> list:
    """C expressions of the coordinates of flat index ``var`` in a contiguous shape."""
    out, inner = [], 1
    exprs = []
    for k in reversed(range(len(shape))):
        size = shape[k]
        if size == 1:
            exprs.append("0")
        else:
            t = var if inner == 1 else f"({var} / {inner}L)"
            if any(shape[j] != 1 for j in range(k)):
                t = f"({t} % {size}L)"
            exprs.append(t)
        inner *= size
    out = list(reversed(exprs))
    return out


def offset_of(coords, shape) -> str:
    """C expression of the contiguous offset of coordinate expressions in ``shape``."""
    terms, stride = [], 1
    for c, size in zip(reversed(coords), reversed(shape)):
        if size != 1:
            terms.append(f"({c})" if stride == 1 else f"({c}) * {stride}L")
        stride *= size
    return " + ".join(reversed(terms)) if terms else "0"
