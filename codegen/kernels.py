"""Kernel text for fused groups: elementwise groups, reductions with fused prologues,
and the index-mapping copy kernels of layout ops.

Expressions of a group are composed by substitution into one sympy tree per stored
value, then ``sympy.cse`` shares common work across all of the kernel's outputs.

Reductions on CUDA (lower.py picks the form from the sizes; the CPU keeps one form:
a thread owns a row, with vector inner loops).

- Group per row, rows of up to WARP_ROW_MAX elements: a group of L lanes (L the
  smallest power of two >= the row length, at most a warp of 32) reduces a row with
  a shuffle butterfly (sn_block_group_*), so a warp handles 32 / L rows and a block
  of 128 threads 4 to 128 rows; no shared memory, no block barrier. A 10-class
  softmax uses 16 lanes per row instead of one block of 128 threads.
- Block per row, longer rows when there are enough rows to give every SM blocks (at
  least BLOCK_ROWS_PER_SM rows per SM of the model device), or when a row is shorter
  than two chunks: a block of 256 threads per row, warp butterflies then the warps'
  results through shared memory (sn_block_*).
- Two stages, long rows with few rows and full sums: each stage of the kernel
  becomes two launches. The partial launch splits every row into chunks (enough
  (row, chunk) blocks to fill the device once, each chunk at least CHUNK_MIN
  elements, at most CHUNKS_MAX chunks), one block per chunk, and writes a partial per
  (row, chunk) to a scratch buffer; the combine launch reduces a row's partials with
  a group per row. A later stage reads the results of earlier ones (softmax: the max,
  then the sum of exp(x - max)) from memory.

Every launch records ``step.attrs["extent"]``, the threads it wants; its grid is
min(blocks needed, blocks that fill the model device once) (prelude.device_grid).
The helpers that synchronise are named sn_block_* so that the cuda-emu launcher,
which looks for "sn_block_" or "__syncthreads" in a kernel's text, runs them as
fibers.

max and min propagate NaN in every form (sn_max, sn_min and the reductions'
combines pick the NaN). Loops are 32-bit (SN_IDX) when the kernel's sizes fit, and
the CUDA-only forms print their offsets without long literals then, so index
arithmetic is 32-bit.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import sympy as sp
from sympy.functions.elementary.piecewise import ExprCondPair

from symnet import ops, scalar

from .cprinter import ccode
from .indexing import Space, coords_of, offset_of, split_inner
from .prelude import CUDA_REDUCE_BLOCK


@dataclass
class KernelText:
    """A kernel's body and signature; ``name`` is assigned when the module is built."""
    base_name: str
    params: tuple          # ((type, name), ...) as in templates: p, c, l, f
    body: str
    comment: str
    block: int = 128

    def source(self, name) -> str:
        ctype = {"p": "float* __restrict__", "c": "const float* __restrict__",
                 "l": "long", "f": "float"}
        sig = ", ".join(f"{ctype[t]} {n}" for t, n in self.params)
        return f"/* {self.comment} */\nSN_KERNEL {name}({sig}) {{\n{self.body}}}\n"

    def arg_types(self) -> str:
        return "".join("p" if t in "pc" else t for t, _ in self.params)


def _load_symbol(j):
    return sp.Symbol(f"x{j}", real=True)


def _substitute(expr, subs, memo, pw=None, lift=None):
    """``expr.xreplace(subs)``, except that Piecewise, Max and Min are rebuilt without
    evaluation and a test that an indicator is nonzero becomes the indicator's
    condition: sympy's canonicalisation of these (rewriting conditions that hold
    Piecewises as sets to merge them; factoring Max's arguments) dominated composing a
    large net's kernels, and the printer needs none of it."""
    if expr in subs:
        return subs[expr]
    if not expr.args:
        return expr
    done = memo.get(expr)
    if done is not None:
        return done
    args = tuple(_substitute(a, subs, memo, pw, lift) for a in expr.args)
    if all(a is b for a, b in zip(args, expr.args)):
        out = expr
    elif isinstance(expr, sp.Ne) and args[1] == 0 and _indicator(args[0]) is not None:
        out = _indicator(args[0])           # where(x > y, ...) tests x > y itself
    elif isinstance(expr, ExprCondPair):
        cond = args[1]
        if lift is not None and _holds_piecewise(cond, pw):
            cond = _lift_piecewise(cond, lift, pw)
        out = sp.Basic.__new__(ExprCondPair, args[0], cond)
    elif isinstance(expr, sp.Piecewise):
        out = _piecewise(args)
    elif isinstance(expr, (sp.Max, sp.Min)):
        out = expr.func(*args, evaluate=False)
    else:
        out = expr.func(*args)
    memo[expr] = out
    return out


def _lift_piecewise(expr, lift, pw):
    """expr with each outermost Piecewise inside it replaced by a symbol w<k> whose
    value, in order, is appended to ``lift`` as (symbol, Piecewise). A condition that
    holds a Piecewise (a leaky ReLU testing the value of an earlier kink) is what sympy
    folds through set rewriting, in composition and again in cse, at a cost exponential
    in the nesting: kernels compute such values first, each on its own line."""
    if isinstance(expr, sp.Piecewise):
        for sym, value in lift:
            if value == expr:
                return sym
        sym = sp.Symbol(f"w{len(lift)}", real=True)
        lift.append((sym, expr))
        return sym
    if not _holds_piecewise(expr, pw):
        return expr
    return expr.func(*(_lift_piecewise(a, lift, pw) for a in expr.args))


def _share_lifted(lifted, exprs):
    """Each lifted value also read outside conditions becomes its symbol there too (in
    later lifted values and in ``exprs``), so it is computed once."""
    rep, memo, out = {}, {}, []
    for sym, value in lifted:
        pairs = [sp.Basic.__new__(ExprCondPair, _substitute(e, rep, memo), c)
                 for e, c in value.args]
        out.append((sym, sp.Basic.__new__(sp.Piecewise, *pairs)))
        rep[value] = sym
        memo.clear()
    return out, [_substitute(e, rep, memo) for e in exprs]


def _holds_piecewise(expr, pw):
    """Whether expr contains a Piecewise (memoised in pw)."""
    got = pw.get(expr)
    if got is None:
        got = isinstance(expr, sp.Piecewise) or any(_holds_piecewise(a, pw) for a in expr.args)
        pw[expr] = got
    return got


def _piecewise(pairs):
    """Piecewise of already built (expr, cond) pairs, as Piecewise(evaluate=False)
    builds it (pairs with a false condition dropped, nothing after a true one, a lone
    true pair its expression) but without re-creating each pair: ExprCondPair folds a
    condition that holds a Piecewise (a leaky ReLU's test of a composed value) through
    set rewriting, whose cost grows exponentially with the nesting of such conditions."""
    kept = []
    for pair in pairs:
        if pair.cond == sp.false:
            continue
        kept.append(pair)
        if pair.cond == sp.true:
            break
    if len(kept) == 1 and kept[0].cond == sp.true:
        return kept[0].expr
    return sp.Basic.__new__(sp.Piecewise, *kept)


def _indicator(expr):
    """The condition R of an indicator Piecewise((1, R), (0, True)) (what a comparison
    node computes), else None."""
    if isinstance(expr, sp.Piecewise) and len(expr.args) == 2 and expr.args[0].expr == 1 \
            and expr.args[1].expr == 0 and expr.args[1].cond == sp.true:
        return expr.args[0].cond
    return None


def _compose(graph, nodes, leaf_symbol, consts, lift=None):
    """sympy expression of each node in ``nodes`` (topological), leaves via leaf_symbol;
    constant nodes are inlined. With a list ``lift``, Piecewise values tested inside a
    condition are replaced by symbols and their definitions appended to it, in the
    order to compute them (see _lift_piecewise)."""
    exprs = dict(consts)
    inside = set(nodes)
    pw = {}
    for n in nodes:
        op = graph.op(n)
        subs = {}
        for k, a in enumerate(graph.args(n)):
            subs[scalar.arg_symbol(k)] = exprs[a] if a in inside or a in consts else \
                leaf_symbol(a)
        exprs[n] = _substitute(op.expr, subs, {}, pw, lift)
    return exprs


def _cse_lines(exprs, indent, lifted=()):
    """Lines computing ``exprs`` with common work shared, and the expressions left;
    the ``lifted`` (symbol, value) pairs come first, each value shared within itself."""
    lines = []
    for k, (sym, value) in enumerate(lifted):
        repl, (red,) = sp.cse([value], symbols=sp.numbered_symbols(f"{sym}_t"),
                              optimizations=None, order="canonical")
        lines += [f"{indent}const float {s} = {ccode(e)};" for s, e in repl]
        lines.append(f"{indent}const float {sym} = {ccode(red)};")
    repl, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("t"), optimizations=None,
                           order="canonical")
    lines += [f"{indent}const float {s} = {ccode(e)};" for s, e in repl]
    return lines, reduced


def _name_of(graph, nodes, prefix="k"):
    labels = []
    for n in nodes:
        name = graph.nx.nodes[n].get("name")
        op = graph.op(n)
        label = name or getattr(op, "label", None) or op.kind
        if label not in labels:
            labels.append(label)
    base = "_".join(_ident(l) for l in labels[:4]) or "kernel"
    if len(labels) > 4:
        base += f"_{len(labels) - 4}more"
    return f"{prefix}_{base}"


def _ident(text):
    out = "".join(c if c.isalnum() else "_" for c in str(text)).strip("_")
    return out[:24] or "op"


def _describe(graph, nodes, pos):
    """The ops a kernel computes, by kind or label and position (the kernel's body
    shows their expressions; printing each one again costs a large net seconds)."""
    def short(op):
        label = getattr(op, "label", None)
        return f"{op.kind} '{label}'" if label else op.kind
    return ", ".join(f"{short(graph.op(n))} #{pos[n]}" for n in nodes)


def _elementwise_lines(graph, k, consts, indent):
    """Elementwise kernel ``k`` composed and put through cse: (loads, the lines computing
    its values, the expressions of its stored outputs)."""
    loads = k.loads
    index = {a: j for j, a in enumerate(loads)}
    lifted = []
    exprs = _compose(graph, k.needed, lambda a: _load_symbol(index[a]), consts, lifted)
    out_exprs = [exprs[s] for s in k.stored]
    if lifted:
        lifted, out_exprs = _share_lifted(lifted, out_exprs)
    lines, reduced = _cse_lines(out_exprs, indent, lifted)
    return loads, lines, reduced


def elementwise_kernel(graph, k, pos, consts) -> KernelText:
    space = graph.shape(k.stored[0])
    loads, lines, reduced = _elementwise_lines(graph, k, consts, "    ")
    shapes = [graph.shape(a) for a in loads]
    roles, inner = split_inner(space, ["o"] * len(space), shapes, "o", "j")
    # every operand is broadcast into the space: when the space has fewer than 2**30
    # elements, so has every offset, and the kernel indexes in 32 bits on CUDA
    small = math.prod(space) < 1 << 30
    if roles is None:
        sp_ = Space(space, ["i"] * len(space), shapes)
        body = ["  SN_FOR_I32(i, n) {" if small else "  SN_FOR(i, n) {"]
    else:
        sp_ = Space(space, roles, shapes)
        body = [f"  SN_FOR2_I32(o, n / {inner}L, j, {inner}L) {{" if small else
                f"  SN_FOR2(o, n / {inner}L, j, {inner}L) {{",
                f"    const {'SN_I32' if small else 'long'} i = o * {inner}L + j;"]
    for j, a in enumerate(loads):
        body.append(f"    const float x{j} = in{j}[{sp_.offset(j)}];")
    body += lines
    for o, e in enumerate(reduced):
        body.append(f"    out{o}[i] = {ccode(e)};")
    body.append("  }")
    params = (("l", "n"),) + tuple(("p", f"out{o}") for o in range(len(k.stored))) + \
        tuple(("c", f"in{j}") for j in range(len(loads)))
    text = "\n".join(body) + "\n"
    if small:
        text = re.sub(r"\b(\d+)L\b", r"\1", text)
    return KernelText(_name_of(graph, k.needed), params, text,
                      "fuses " + _describe(graph, k.needed, pos))


def epilogue_function(graph, k, consts, row_len, name) -> str | None:
    """Elementwise kernel ``k`` as a C function a GEMM's kernel calls on the part of
    the output it has just written (still in cache): ``name(r0, r1, j0, j1, out0, ...,
    in0, ...)`` computes the flat indices i = r * row_len + j for rows r in [r0, r1)
    and j in [j0, j1) of the kernel's space, whose trailing dims make up ``row_len``
    (a convolution's output plane, a product's row). Pointers may alias (a stored
    value may share the GEMM output's memory: each i reads its operands before it
    writes), so none is restrict. None when no trailing dims make up ``row_len``."""
    space = graph.shape(k.stored[0])
    d = len(space)
    while d > 0 and math.prod(space[d:]) < row_len:
        d -= 1
    if math.prod(space[d:]) != row_len:
        return None
    loads, lines, reduced = _elementwise_lines(graph, k, consts, "      ")
    shapes = [graph.shape(a) for a in loads]
    sp_ = Space(space, ["o"] * d + ["j"] * (len(space) - d), shapes)
    params = ["long r0", "long r1", "long j0", "long j1"] + \
        [f"float* out{o}" for o in range(len(k.stored))] + \
        [f"const float* in{j}" for j in range(len(loads))]
    body = [f"SN_DEVICE void {name}({', '.join(params)}) {{",
            "  for (long o = r0; o < r1; ++o) {",
            "    SN_PRAGMA(omp simd)",
            "    for (long j = j0; j < j1; ++j) {",
            f"      const long i = o * {row_len}L + j;"]
    for j in range(len(loads)):
        body.append(f"      const float x{j} = in{j}[{sp_.offset(j)}];")
    body += lines
    for o, e in enumerate(reduced):
        body.append(f"      out{o}[i] = {ccode(e)};")
    body += ["    }", "  }", "}"]
    return "\n".join(body) + "\n"


_REDUCE = {
    "sum": ("0.0f", "{acc} += {v};", "sn_block_sum"),
    "max": ("(-INFINITY)", "{acc} = sn_max({acc}, {v});", "sn_block_max"),
    "min": ("INFINITY", "{acc} = sn_min({acc}, {v});", "sn_block_min"),
}

WARP_ROW_MAX = 1024
BLOCK_ROWS_PER_SM = 2
CHUNK_MIN = 2048           # elements per partial block at least (8 per thread)
CHUNKS_MAX = 1024          # partials per row (a combine group reads at most 32 each)
_GROUP = {"sum": "sn_block_group_sum", "max": "sn_block_group_max",
          "min": "sn_block_group_min"}


class _Reduce:
    """What the forms of a reduce kernel share: its index space, loads, and each stage's
    per-element value (lines computing it, the value, the symbols used)."""

    def __init__(self, graph, k, pos, consts):
        self.graph, self.k, self.pos, self.consts = graph, k, pos, consts
        first = k.stages[0]
        x_shape = graph.shape(graph.args(first)[0])
        axes = graph.op(first).axes
        roles = ["r" if d in axes else "o" for d in range(len(x_shape))]
        self.loads = k.loads
        self.index = {a: j for j, a in enumerate(self.loads)}
        shapes = [graph.shape(a) for a in self.loads]
        self.split, self.inner = split_inner(x_shape, roles, shapes, "r", "q")
        self.space = Space(x_shape, self.split or roles, shapes)
        self.stage_sym = {s: sp.Symbol(f"acc{j}", real=True) for j, s in enumerate(k.stages)}
        self.nodes = sorted(set().union(*k.prologue.values()), key=pos.get) + list(k.stages)
        self.name = _name_of(graph, self.nodes)
        self.comment = "reduces with prologue: " + _describe(graph, self.nodes, pos)

    def stage(self, j, indent):
        s = self.k.stages[j]
        pro = self.k.prologue[s]
        order = sorted(pro, key=self.pos.get)

        def leaf(a):
            return self.stage_sym[a] if a in self.stage_sym else _load_symbol(self.index[a])

        (x,) = self.graph.args(s)
        lifted = []
        if pro:
            value = _compose(self.graph, order, leaf, self.consts, lifted)[x]
        else:
            value = self.consts[x] if x in self.consts else leaf(x)
        if lifted:
            lifted, (value,) = _share_lifted(lifted, [value])
        lines, (v,) = _cse_lines([value], indent, lifted)
        used = set(value.free_symbols).union(*(e.free_symbols for _, e in lifted))
        return self.graph.op(s).how, lines, v, used

    def load_lines(self, used, indent):
        return [f"{indent}const float x{jj} = in{jj}[{self.space.offset(jj)}];"
                for jj in range(len(self.loads)) if _load_symbol(jj) in used]


def reduce_kernel(graph, k, pos, consts, form=None) -> KernelText:
    """A reduce kernel computing all stages of ``k`` in one launch. ``form``: None, the
    text both preludes run (a row per block on CUDA: the CPU form, and the block per
    row form with ``("block",)``); ``("group", L)``: rows of L lanes (CUDA only)."""
    red = _Reduce(graph, k, pos, consts)
    split, inner = red.split, red.inner
    group = form is not None and form[0] == "group"
    lanes = form[1] if group else 0
    if group:
        body = [f"  const int sn_lane = threadIdx.x % {lanes};",
                f"  SN_GROUP_ROWS(o, n_out, {lanes}) {{",
                "    const bool sn_ok = o < n_out;"]
    else:
        body = ["  SN_ROWS(o, n_out) {"]
    for j, s in enumerate(k.stages):
        how, lines, v, used = red.stage(j, "      ")
        init, combine, block = _REDUCE[how]
        if group:
            span = f"sn_lane, sn_ok ? n_red : 0, {lanes}, n_out * n_red"
            loop = f"SN_LANE_LOOP(r, {span})" if split is None else \
                f"SN_LANE_LOOP2(r, q, {inner}L, {span})"
        elif split is None:
            loop = f"SN_ROW_LOOP_SUM(r, n_red, acc{j})" if how == "sum" else \
                "SN_ROW_LOOP(r, n_red)"
        else:
            loop = f"SN_ROW_LOOP2_SUM(r, n_red / {inner}L, q, {inner}L, acc{j})" \
                if how == "sum" else f"SN_ROW_LOOP2(r, n_red / {inner}L, q, {inner}L)"
        body.append(f"    float acc{j} = {init};")
        body.append(f"    {loop} {{")
        body.extend(red.load_lines(used, "      "))
        body.extend(lines)
        body.append("      " + combine.format(acc=f"acc{j}", v=ccode(v)))
        body.append("    }")
        if not group:
            body.append(f"    acc{j} = {block}(acc{j});")
        elif lanes > 1:
            body.append(f"    acc{j} = {_GROUP[how]}<{lanes}>(acc{j});")
    stores = [f"out{i}[o] = acc{k.stages.index(s)};" for i, s in enumerate(k.stored)]
    leader = "sn_ok && sn_lane == 0" if group else "SN_ROW_LEADER"
    body.append(f"    if ({leader}) {{ {' '.join(stores)} }}")
    body.append("  }")
    params = (("l", "n_out"), ("l", "n_red")) + \
        tuple(("p", f"out{o}") for o in range(len(k.stored))) + \
        tuple(("c", f"in{j}") for j in range(len(red.loads)))
    text = "\n".join(body) + "\n"
    if group:
        text = _int_literals(text, graph, k)
    return KernelText(red.name, params, text, red.comment, 128)


def reduce_partial_kernel(graph, k, pos, consts, j) -> tuple:
    """Stage ``j`` of ``k``, first of its two launches: block ``p`` of the grid-stride
    loop reduces chunk ``p % n_chunk`` (``chunk`` elements) of row ``p / n_chunk`` into
    ``part[p]``; earlier stages' results are read from ``st{i}[o]``. Returns the text
    and the loads (operand numbers) and earlier stages it reads."""
    red = _Reduce(graph, k, pos, consts)
    how, lines, v, used = red.stage(j, "      ")
    init, combine, block = _REDUCE[how]
    prev = [i for i in range(j) if red.stage_sym[k.stages[i]] in used]
    loads = [jj for jj in range(len(red.loads)) if _load_symbol(jj) in used]
    span = "sn_c * (sn_t)chunk + threadIdx.x, sn_end, blockDim.x, n_out * n_red"
    loop = f"SN_LANE_LOOP(r, {span})" if red.split is None else \
        f"SN_LANE_LOOP2(r, q, {red.inner}L, {span})"
    body = ["  typedef SN_IDX(n_out * n_red) sn_t;",
            "  SN_ROWS(sn_p, n_out * n_chunk) {",
            "    const sn_t o = sn_p / (sn_t)n_chunk, sn_c = sn_p % (sn_t)n_chunk;",
            "    const sn_t sn_end = sn_c * (sn_t)chunk + (sn_t)chunk < n_red ? "
            "sn_c * (sn_t)chunk + (sn_t)chunk : (sn_t)n_red;"]
    body += [f"    const float acc{i} = st{i}[o];" for i in prev]
    body += [f"    float acc{j} = {init};", f"    {loop} {{"]
    body += red.load_lines(used, "      ") + lines
    body += ["      " + combine.format(acc=f"acc{j}", v=ccode(v)), "    }",
             f"    acc{j} = {block}(acc{j});",
             f"    if (threadIdx.x == 0) part[sn_p] = acc{j};", "  }"]
    params = (("l", "n_out"), ("l", "n_red"), ("l", "n_chunk"), ("l", "chunk"),
              ("p", "part")) + tuple(("c", f"st{i}") for i in prev) + \
        tuple(("c", f"in{jj}") for jj in loads)
    text = _int_literals("\n".join(body) + "\n", graph, k)
    return KernelText(f"{red.name}_part{j}", params, text,
                      f"stage {j} partials ({how}) of: {red.comment}", CUDA_REDUCE_BLOCK), loads, prev


def reduce_combine_kernel(how, lanes) -> KernelText:
    """Second launch of a two-stage reduction: ``res[o]`` is the ``how`` of row o's
    ``n_chunk`` partials, reduced by a group of ``lanes`` lanes per row."""
    init, combine, _ = _REDUCE[how]
    body = [f"  const int sn_lane = threadIdx.x % {lanes};",
            "  typedef SN_IDX(n_out * n_chunk) sn_t;",
            f"  SN_GROUP_ROWS(o, n_out, {lanes}) {{",
            "    const bool sn_ok = o < n_out;",
            f"    float acc = {init};",
            f"    SN_LANE_LOOP(r, sn_lane, sn_ok ? n_chunk : 0, {lanes}, n_out * n_chunk) {{",
            "      " + combine.format(acc="acc", v="part[o * (sn_t)n_chunk + r]"),
            "    }"]
    if lanes > 1:
        body.append(f"    acc = {_GROUP[how]}<{lanes}>(acc);")
    body += ["    if (sn_ok && sn_lane == 0) res[o] = acc;", "  }"]
    params = (("l", "n_out"), ("l", "n_chunk"), ("p", "res"), ("c", "part"))
    return KernelText(f"k_combine_{how}", params, "\n".join(body) + "\n",
                      f"combines partial {how}s of rows", 128)


def group_lanes(n):
    """Lanes of a row group for rows of n elements: a power of two, at most a warp."""
    lanes = 1
    while lanes < min(n, 32):
        lanes *= 2
    return lanes


def _int_literals(text, graph, k):
    """CUDA-only reduce text with its long literals printed as plain ones when every
    index of the kernel fits 32 bits (the loop variables are then ints, SN_IDX), so
    offset arithmetic stays 32-bit; unchanged otherwise."""
    n_out, n_red = reduce_sizes(graph, k)
    if n_out * n_red >= 1 << 30:
        return text
    return re.sub(r"\b(\d+)L\b", r"\1", text)


def reduce_sizes(graph, k):
    first = k.stages[0]
    x_shape = graph.shape(graph.args(first)[0])
    axes = graph.op(first).axes
    n_red = 1
    for d in axes:
        n_red *= x_shape[d]
    n_out = 1
    for d, size in enumerate(x_shape):
        if d not in axes:
            n_out *= size
    return n_out, n_red


def copy_kernel(graph, n, pos) -> list:
    """Index-mapping kernels for a layout op: [(KernelText, argument read, iteration
    space)], the space being the output's shape or (for concat) the argument's."""
    op = graph.op(n)
    out_shape = graph.shape(n)
    args = graph.args(n)
    in_shape = graph.shape(args[0])
    c = coords_of("i", out_shape)
    if isinstance(op, ops.Transpose):
        src = [None] * len(in_shape)
        for d, p in enumerate(op.perm):
            src[p] = c[d]
        return [(_copy_text(graph, n, pos, offset_of(src, in_shape), None), 0, out_shape)]
    if isinstance(op, ops.Slice):
        src = [f"{s[0]}L + ({ci}) * {s[2]}L" for ci, s in zip(c, op.slices)]
        return [(_copy_text(graph, n, pos, offset_of(src, in_shape), None), 0, out_shape)]
    if isinstance(op, ops.Pad):
        src = [f"({ci}) - {a}L" for ci, (a, _) in zip(c, op.pads)]
        conds = [f"({s}) >= 0 && ({s}) < {d}L" for s, d, (a, b) in zip(src, in_shape, op.pads)
                 if a or b]
        return [(_copy_text(graph, n, pos, offset_of(src, in_shape), " && ".join(conds) or None,
                            op.value), 0, out_shape)]
    if isinstance(op, ops.SliceGrad):
        g_shape = in_shape
        src, conds = [], []
        for ci, (start, stop, step), size in zip(c, op.slices, g_shape):
            t = f"(({ci}) - {start}L)"
            src.append(f"{t} / {step}L")
            conds.append(f"{t} % {step}L == 0 && {t} / {step}L >= 0 && {t} / {step}L < {size}L")
        return [(_copy_text(graph, n, pos, offset_of(src, g_shape), " && ".join(conds)),
                 0, out_shape)]
    if isinstance(op, ops.Concat):
        out = []
        start = 0
        for j, a in enumerate(args):
            shape = graph.shape(a)
            ci = coords_of("i", shape)
            dst = list(ci)
            dst[op.axis] = f"({ci[op.axis]}) + {start}L"
            body = (f"  SN_FOR(i, n) {{\n    out0[{offset_of(dst, out_shape)}] = in0[i];\n  }}\n")
            out.append((KernelText(_name_of(graph, [n], "k_copy"),
                                   (("l", "n"), ("p", "out0"), ("c", "in0")), body,
                                   f"part {j} of {op.describe()} #{pos[n]}"), j, shape))
            start += shape[op.axis]
        return out
    raise NotImplementedError(f"no copy kernel for {op.describe()}")


def _copy_text(graph, n, pos, offset, cond, fill=0.0):
    value = f"in0[{offset}]"
    if cond:
        value = f"({cond}) ? in0[{offset}] : {ccode(sp.Float(fill))}"
    body = f"  SN_FOR(i, n) {{\n    out0[i] = {value};\n  }}\n"
    return KernelText(_name_of(graph, [n], "k_copy"), (("l", "n"), ("p", "out0"), ("c", "in0")),
                      body, f"{graph.op(n).describe()} #{pos[n]}")
