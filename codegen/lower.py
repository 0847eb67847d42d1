"""Lowering: a partitioned graph becomes a Plan for one backend.

Each fused kernel becomes one launch; library ops become launches of templates; GEMMs
are cuBLAS calls on the CUDA backends (Plan steps of kind "gemm", see ``sgemm``) and
kernels calling BLAS's sgemm on the CPU. Values get buffers, and temporaries whose
lifetimes do not overlap share one.
"""
from __future__ import annotations

import bisect
import heapq
import math
import os
import re

from symnet import ops

from . import kernels as K
from .kernels import _ident
from . import templates as T
from . import winograd as WG
from .fusion import partition
from .indexing import coords_of, offset_of
from .plan import Buffer, KernelInfo, Plan, Step, param_derived
from .prelude import C_PRELUDE, CUDA_PRELUDE, DEVICE_SMS, blocks_per_sm, device_grid


def cpu_threads() -> int:
    """The OpenMP team size CPU kernels that split work by thread are written for:
    ``SYMNET_NUM_THREADS``, else OMP_NUM_THREADS's first value, else the available cores
    (as the runtime's ``cpu.configured_threads``)."""
    for var in ("SYMNET_NUM_THREADS", "OMP_NUM_THREADS"):
        env = os.environ.get(var, "").split(",")[0].strip()
        if env.isdigit() and int(env) > 0:
            return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


# Channels per group (input or output, the larger) up to which a grouped convolution
# (group > 1) is computed by a direct kernel instead of columns and a GEMM per group.
# CPU, measured (3x3, 256 channels of 28x28, batch 1 and 8, one thread): the direct
# kernels are 2-13x faster at 1 and 2 channels per group, 1.5-1.9x at 4 (forward and
# forward + both gradients), even at 8 and slower from 16. CUDA: the direct kernels (a
# thread per output element, where cuBLAS would run a GEMM of at most 8 rows and 72-long
# sums per group after writing the columns) serve groups of up to 8 channels, as
# cuDNN's depthwise kernels do; wider groups stay on cuBLAS (0 puts every grouped
# convolution on cuBLAS, whose calls tests/runtime/test_cublas.py checks).
DIRECT_GROUP_CHANNELS_CPU = 4
DIRECT_GROUP_CHANNELS = 8
# The CPU's direct kernels keep a row of zeros (and the weight gradient rows of partial
# sums, when short enough) on a thread's stack: images at most this wide.
DIRECT_MAX_WIDTH_CPU = 16384


# CPU: a convolution's or product's GEMM applies the elementwise kernel that follows it
# (bias, inference BatchNorm and Scale, ReLU, a residual sum) to each piece of its
# output right after computing it, while the piece is in cache, instead of in a pass of
# its own (fusion.Partition._gemm_epilogues pairs them). SYMNET_GEMM_EPILOGUES=0, or
# setting this to False before compiling, keeps the separate pass (to compare).
GEMM_EPILOGUES = os.environ.get("SYMNET_GEMM_EPILOGUES", "1").strip() != "0"
# An epilogue that stores several values (a Net stores every version of an in-place
# chain: the bias, BatchNorm, Scale and ReLU outputs) is applied only while they total
# at most this many bytes: measured (one thread, 64 -> 256 channels 1x1 on 56x56, four
# values stored), inside the GEMM it was faster at batch 1 (1.58 against 1.88-1.98 ms)
# and slower at batch 8 (19.9-21.2 against 17.3-19.1 ms); storing one value it was as
# fast at batch 1 and faster at batch 8 (7.4 against 8.5 ms).
EPILOGUE_MAX_BYTES = 32 << 20
# CPU: convolutions image by image multiply with the panel kernels' own vector GEMM
# (templates.CONV_PANEL_CPU, CONV_T_PANEL_CPU, CONV_WGRAD_PANEL_CPU), reading a padded
# copy of each image instead of im2col columns and BLAS's sgemm (which packs its
# operands again on every call): the weight gradient at any stride, the forward and the
# input gradient at stride 1 with output rows a multiple of 8 wide (other shapes, packed
# as columns, were slower than sgemm in places: AlexNet's conv1 forward 16.6 against
# 14.4 ms, its grouped conv2 input gradient 38.7 against 27.2 ms at batch 8).
# SYMNET_CONV_PANELS=0, or setting this to False before compiling, calls sgemm (to
# compare).
CONV_PANELS = os.environ.get("SYMNET_CONV_PANELS", "1").strip() != "0"
# ... when the sums are at least this long (C/G*kh*kw; LeNet's first layer, 25 taps,
# was faster with sgemm) and, for the weight gradient, there are at least this many
# outputs per group (fewer: most of a 32-channel panel would be zeros, LeNet's 20
# outputs of 25 taps took 1.21 against 0.53 ms).
PANEL_MIN_TAPS = 64
PANEL_MIN_OUTPUTS = 32


def _grid(extent, block):
    """Blocks for ``extent`` threads on the model device (prelude.DEVICE_SMS SMs)."""
    return device_grid(extent, block)


class Lowering:
    def __init__(self, graph, input_ids, output_ids, backend):
        self.graph = graph
        self.backend = backend
        self.device_gemm = backend != "cpu"
        self.threads = cpu_threads()
        self.part = partition(graph, output_ids,
                              epilogues=backend == "cpu" and GEMM_EPILOGUES)
        self._pending = None    # (GEMM node, its epilogue kernel) while lowering it
        self.pos = self.part.pos
        self.values = {}        # node id -> value id
        self.vsize = []         # value id -> size
        self.vrole = []         # value id -> role
        self.vname = []
        self.steps = []         # Step with args ["val", vid, offset]
        self.texts = {}         # kernel text key -> name
        self.sources = []       # (name, text)
        self.kinfo = {}
        self.masks = {}         # (x node, pool key) -> mask value
        self.cols = {}          # (x node, conv geometry) -> im2col value
        self.views = {}         # transpose node -> the node a GEMM reads through strides
        self.callbacks = {}     # host step name -> callable(list of flat arrays)
        self._host_done = set()
        self.constants = {}
        self.params = []
        self._leaves(input_ids)
        for k in self.part.kernels:
            self._lower(k)
        self.output_values = [self.value(o) for o in output_ids]

    # ------------------------------------------------------------ values
    def new_value(self, size, role="temp", name=""):
        self.vsize.append(max(1, int(size)))
        self.vrole.append(role)
        self.vname.append(name)
        return len(self.vsize) - 1

    def value(self, n):
        if n not in self.values:
            self.values[n] = self.new_value(math.prod(self.graph.shape(n)), "temp",
                                            self.graph.nx.nodes[n].get("name") or "")
        return self.values[n]

    def _leaves(self, input_ids):
        g = self.graph
        self.input_values = []
        for n in input_ids:
            v = self.new_value(math.prod(g.shape(n)), "input", g.op(n).name)
            self.values[n] = v
            self.input_values.append(v)
        for n in self.part.order:
            op = g.op(n)
            if n in self.values or n not in self.part.stored:
                continue
            if isinstance(op, ops.Param):
                # the size from the shape: a param's get_value() is a write access
                self.values[n] = self.new_value(math.prod(g.shape(n)), "param", op.name)
                self.params.append((n, self.values[n]))
            elif isinstance(op, ops.Constant):
                self.values[n] = self.new_value(op.get_value().size, "constant")
                self.constants[self.values[n]] = op.get_value()

    # ------------------------------------------------------------ steps
    def _kernel_name(self, text: K.KernelText):
        key = (text.params, text.body)
        if key in self.texts:
            return self.texts[key]
        name = text.base_name
        taken = {nm for nm, _ in self.sources}
        i = 2
        while name in taken:
            name = f"{text.base_name}_{i}"
            i += 1
        self.texts[key] = name
        self.sources.append((name, text.source(name)))
        self.kinfo[name] = KernelInfo(name, text.arg_types(), text.block)
        return name

    def _template(self, t: T.Template) -> K.KernelText:
        if self.backend == "cpu":
            t = T.CPU_VARIANTS.get(t.name, t)
        return K.KernelText(t.name, t.params, t.body.strip("\n") + "\n", "library kernel",
                            t.block)

    def launch(self, spec: K.KernelText, args, extent, nodes, boundary=""):
        """Launch ``spec`` with ``args`` over ``extent`` threads; its sizes (long
        parameters) are baked into the kernel text as constants, so index arithmetic
        divides by literals. The grid is sized for the model device; CUDA steps record
        the extent and blocks per SM, so the cuda backend re-derives the grid for the
        device it runs on."""
        narrow = self._narrow(spec, args, extent)
        consts, params, kept = [], [], []
        for (t, pname), a in zip(spec.params, args):
            if t == "l":
                consts.append(f"  const int {pname} = {int(a[1])};" if narrow else
                              f"  const long {pname} = {int(a[1])}L;")
            else:
                params.append((t, pname))
                kept.append(a)
        body = re.sub(r"\blong\b", "int", spec.body) if narrow else spec.body
        text = K.KernelText(spec.base_name, tuple(params), "\n".join(consts + [body]),
                            spec.comment, spec.block)
        name = self._kernel_name(text)
        block = spec.block
        args = kept
        reads = [a for a in args if a[0] == "val" and a[3] == "r"]
        writes = [a for a in args if a[0] == "val" and a[3] == "w"]
        step = Step("kernel", name, [a[:3] if a[0] == "val" else a for a in args],
                    grid=_grid(extent, block), block=block,
                    ops=[self._op_name(n) for n in nodes],
                    bytes_read=4 * sum(self.vsize[a[1]] for a in _unique(reads)),
                    bytes_written=4 * sum(self.vsize[a[1]] for a in _unique(writes)),
                    boundary=boundary)
        step.attrs["_rw"] = [[a[1], a[3]] for a in args if a[0] == "val"]
        step.attrs["layers"] = self._layers_of(nodes)
        if self.backend != "cpu":
            step.attrs["extent"] = int(extent)
            step.attrs["blocks_per_sm"] = blocks_per_sm(block)
        self.steps.append(step)
        return step

    def _narrow(self, spec, args, extent):
        """Whether a CUDA library kernel does its index arithmetic in 32 bits: every size
        it is given and every buffer it touches hold fewer than 2**30 values, so no
        offset into them overflows (generated kernels decide this for themselves)."""
        if self.backend == "cpu" or spec.comment != "library kernel":
            return False
        sizes = [int(extent)] + [abs(int(a[1])) for a in args if a[0] == "long"] + \
            [self.vsize[a[1]] for a in args if a[0] == "val"]
        return max(sizes) < 2 ** 30

    def sgemm(self, nodes, a, b, c, attrs):
        """A cuBLAS call (column-major ``cublasSgemmStridedBatched``) as a Plan step:
        ``Step("gemm", "sgemm", [A, B, C], attrs)`` with A and B read, C written, and
        attrs transa, transb (0 = N, 1 = T), m, n, k, alpha, beta, lda, ldb, ldc,
        strideA, strideB, strideC (elements), batch and flops. The executor hands the
        backend the three device addresses (offsets applied)."""
        m, n, k, batch = attrs["m"], attrs["n"], attrs["k"], attrs["batch"]
        mats = lambda stride: batch if stride and batch > 1 else 1   # noqa: E731
        rw = [[a[1], "r"], [b[1], "r"], [c[1], "w"]]
        read = m * k * mats(attrs["strideA"]) + k * n * mats(attrs["strideB"])
        if attrs["beta"] != 0.0:
            rw.append([c[1], "r"])
            read += m * n * batch
        attrs = dict(attrs, flops=2 * m * n * k * batch)
        step = Step("gemm", "sgemm", [a[:3], b[:3], c[:3]], ops=[self._op_name(x) for x in nodes],
                    bytes_read=4 * read, bytes_written=4 * m * n * batch, attrs=attrs)
        step.attrs["_rw"] = rw
        step.attrs["layers"] = self._layers_of(nodes)
        self.steps.append(step)
        return step

    def _layers_of(self, nodes):
        tags = [self.graph.nx.nodes[n].get("layer") for n in nodes]
        return sorted({t for t in tags if t})

    def _op_name(self, n):
        name = self.graph.nx.nodes[n].get("name")
        op = self.graph.op(n)
        label = getattr(op, "label", None) or op.kind
        return f"{label}#{self.pos[n]}" + (f" '{name}'" if name else "")

    def r(self, n, off=0):
        return ["val", self.value(n), off, "r"]

    def w(self, n, off=0):
        return ["val", self.value(n), off, "w"]

    # ------------------------------------------------------------ kernels
    def _boundary(self, k):
        return "; ".join(f"#{self.pos[s]}: {why}" for s, why in k.boundaries)

    def _lower(self, k):
        g = self.graph
        if k.kind == "alias":
            (n,) = k.members
            self.values[n] = self.value(g.args(n)[0])
            return
        if k.kind == "view":
            (n,) = k.members
            self.views[n] = g.args(n)[0]
            return
        if k.kind == "elementwise":
            if k.fused:
                return
            text = K.elementwise_kernel(g, k, self.pos, self.part.consts)
            n = math.prod(g.shape(k.stored[0]))
            args = [["long", n]] + [self.w(s) for s in k.stored] + [self.r(a) for a in k.loads]
            self.launch(text, args, n, k.needed, boundary=self._boundary(k))
            return
        if k.kind == "reduce":
            self._lower_reduce(k)
            return
        (n,) = k.members
        op = g.op(n)
        method = getattr(self, "_lower_" + type(op).__name__, None)
        if method is None:
            raise NotImplementedError(f"codegen: no lowering for {op.describe()}")
        self._pending = (n, k.epilogue) if k.epilogue is not None else None
        try:
            method(n, op)
        finally:
            self._pending = None

    # ------------------------------------------------------------ GEMM epilogues
    def _epilogue(self, n, args, params, body, row_len, out_index):
        """Apply the pending epilogue of GEMM node ``n`` (if any) in a CPU library
        kernel: ``args``/``params`` are the kernel's arguments and parameters, ``body``
        its text with /*SN_EPILOGUE(...)*/ markers, rows ``row_len`` long, args[
        out_index] the GEMM's output (all of n, from offset 0). Returns (args, params,
        body, the epilogue kernel applied), the body's markers replaced by calls of the
        epilogue function, or unchanged (and None) when there is nothing to apply."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != n or "/*SN_EPILOGUE(" not in body:
            return args, params, body, None
        e = pending[1]
        g = self.graph
        out = args[out_index]
        if out[0] != "val" or out[2] != 0 or out[1] != self.value(n):
            return args, params, body, None
        fname = "sn_epi_" + K._name_of(g, e.needed, "k")[2:]
        if len(e.stored) > 1 and \
                4 * math.prod(g.shape(n)) * len(e.stored) > EPILOGUE_MAX_BYTES:
            return args, params, body, None
        text = K.epilogue_function(g, e, self.part.consts, row_len, "SN_EPI_NAME")
        if text is None:
            return args, params, body, None
        # n read only by the epilogue: the GEMM writes its first stored value's memory
        # and the epilogue rewrites it in place (no buffer for n). Not when the epilogue
        # reads an input: the caller may bind an output to an input's memory (a param
        # diff accumulated in place: diff + gradient), which the GEMM would overwrite
        # before the epilogue reads it.
        readers = self._readers_of(n)
        if n not in self.part.outputs and len(readers) == 1 and readers[0] is e and \
                not any(isinstance(g.op(a), ops.Input) for a in e.loads) and \
                math.prod(g.shape(e.stored[0])) == self.vsize[out[1]]:
            self.values[n] = self.value(e.stored[0])
            out = ["val", self.values[n], 0, out[3]]
            args = list(args)
            args[out_index] = out
        key = ("epilogue", text)
        if key not in self.texts:
            name = fname
            taken = {nm for nm, _ in self.sources}
            i = 2
            while name in taken:
                name = f"{fname}_{i}"
                i += 1
            self.texts[key] = name
            self.sources.append((name, text.replace("SN_EPI_NAME", name)))
        name = self.texts[key]
        # pointer arguments: the kernel's own where the value is one it already has
        have = {}
        for (t, pname), a in zip(params, args):
            if a[0] == "val" and t in "pc":
                have.setdefault(a[1], (pname, t))
        args, params = list(args), list(params)
        ptrs = []
        for role, nodes in (("w", e.stored), ("r", e.loads)):
            for v in nodes:
                vid = self.value(v)
                if vid in have and (role == "r" or have[vid][1] == "p"):
                    ptrs.append(have[vid][0])
                    continue
                pname = f"epi{len(ptrs)}"
                params.append(("p" if role == "w" else "c", pname))
                args.append(["val", vid, 0, role])
                have[vid] = (pname, "p" if role == "w" else "c")
                ptrs.append(pname)
        body = re.sub(r"/\*SN_EPILOGUE\((.*)\)\*/",
                      lambda m: f"{name}({m.group(1)}, {', '.join(ptrs)});", body)
        e.fused = True
        return args, params, body, e

    def _readers_of(self, n):
        """The partition's kernels that load n (an index built on first use)."""
        index = getattr(self, "_reader_index", None)
        if index is None:
            index = self._reader_index = {}
            for k in self.part.kernels:
                for a in dict.fromkeys(k.loads):
                    index.setdefault(a, []).append(k)
        return index.get(n, [])

    def _lower_reduce(self, k):
        """A reduce kernel: on the CPU one launch (a thread per row); on CUDA the form
        that fits its sizes (kernels.py: a group of lanes per row, a block per row, or
        each stage as partial and combine launches)."""
        g = self.graph
        n_out, n_red = K.reduce_sizes(g, k)
        nodes = sorted(set().union(*k.prologue.values()), key=self.pos.get) + k.stages
        outs = [self.w(s) for s in k.stored]
        ins = [self.r(a) for a in k.loads]
        sizes = [["long", n_out], ["long", n_red]]
        boundary = self._boundary(k)
        if self.backend == "cpu":
            text = K.reduce_kernel(g, k, self.pos, self.part.consts)
            self._reduce_launch(text, sizes + outs + ins, n_out * text.block, nodes, boundary)
            return
        if n_red <= K.WARP_ROW_MAX:
            lanes = K.group_lanes(n_red)
            text = K.reduce_kernel(g, k, self.pos, self.part.consts, ("group", lanes))
            extent = -(-n_out * lanes // 32) * 32
            self._reduce_launch(text, sizes + outs + ins, extent, nodes, boundary)
            return
        block = K.CUDA_REDUCE_BLOCK
        want = DEVICE_SMS * blocks_per_sm(block)
        chunks = min(-(-want // max(n_out, 1)), -(-n_red // K.CHUNK_MIN), K.CHUNKS_MAX)
        if n_out >= DEVICE_SMS * K.BLOCK_ROWS_PER_SM or chunks <= 1:
            text = K.reduce_kernel(g, k, self.pos, self.part.consts)
            text.block = block
            self._reduce_launch(text, sizes + outs + ins, n_out * block, nodes, boundary)
            return
        chunk = -(-n_red // chunks)
        chunks = -(-n_red // chunk)
        results = {}
        for j, s in enumerate(k.stages):
            text, loads, prev = K.reduce_partial_kernel(g, k, self.pos, self.part.consts, j)
            part = self.new_value(n_out * chunks, "temp", "partials")
            args = sizes + [["long", chunks], ["long", chunk], ["val", part, 0, "w"]] + \
                [results[i][:3] + ["r"] for i in prev] + [ins[jj] for jj in loads]
            self._reduce_launch(text, args, n_out * chunks * block, nodes, boundary)
            res = self.w(s) if s in k.stored else \
                ["val", self.new_value(n_out, "temp", "stage"), 0, "w"]
            lanes = K.group_lanes(chunks)
            self._reduce_launch(K.reduce_combine_kernel(g.op(s).how, lanes),
                                [["long", n_out], ["long", chunks], res, ["val", part, 0, "r"]],
                                -(-n_out * lanes // 32) * 32, nodes, boundary)
            results[j] = res

    def _reduce_launch(self, text, args, extent, nodes, boundary):
        return self.launch(text, args, extent, nodes, boundary=boundary)

    # layout ops: index-mapping copies
    def _copy(self, n, op):
        args = self.graph.args(n)
        for text, which, space in K.copy_kernel(self.graph, n, self.pos):
            size = math.prod(space)
            self.launch(text, [["long", size], self.w(n), self.r(args[which])], size, [n])

    _lower_Transpose = _lower_Pad = _copy

    # Slices and concats: the constant part of each offset (a slice's start, a concat
    # piece's position) goes into the pointer argument, not into the kernel text, so the
    # copies of an unrolled loop's steps (x[t], the pieces of its output) share one
    # kernel text; a piece that is one contiguous block is a plain copy.
    def _block_copy(self, n, text_dst, text_src, size, out, src, what):
        text = K.KernelText(K._name_of(self.graph, [n], "k_copy"),
                            (("l", "n"), ("p", "out0"), ("c", "in0")),
                            f"  SN_FOR(i, n) {{\n    out0[{text_dst}] = in0[{text_src}];\n"
                            "  }\n", f"{what} #{self.pos[n]}")
        return self.launch(text, [["long", size], out, src], size, [n])

    def _view_candidates(self):
        """Copies that may become views (see _place_views), in the order of the steps:
        ("slice", step, value, the value it views, offset) and ("concat", [(step,
        piece's value, offset)], the concat's value, None, None)."""
        found = self.__dict__.get("_view_cands")
        if found is None:
            found = self._view_cands = []
        return found

    def _lower_Slice(self, n, op):
        (x,) = self.graph.args(n)
        in_shape, out_shape = self.graph.shape(x), self.graph.shape(n)
        size = math.prod(out_shape)
        strides = _strides(in_shape)
        base = sum(s[0] * st for s, st in zip(op.slices, strides))
        if size and _contiguous_block(op.slices, in_shape, out_shape):
            step = self._block_copy(n, "i", "i", size, self.w(n), self.r(x, base),
                                    op.describe())
            self._view_candidates().append(("slice", step, self.value(n), self.value(x),
                                            base))
            return
        c = coords_of("i", out_shape)
        src = offset_of([f"({ci}) * {s[2]}L" if s[2] != 1 else ci
                         for ci, s in zip(c, op.slices)], in_shape)
        self._block_copy(n, "i", src, size, self.w(n), self.r(x, base), op.describe())

    def _lower_SliceGrad(self, n, op):
        """Zeros, then the cotangent written into the slice's place."""
        (gy,) = self.graph.args(n)
        g_shape, out_shape = self.graph.shape(gy), op.in_shape
        total, size = math.prod(out_shape), math.prod(g_shape)
        if size < total:
            text = K.KernelText(K._name_of(self.graph, [n], "k_zero"),
                                (("l", "n"), ("p", "out0")),
                                "  SN_FOR(i, n) {\n    out0[i] = 0.0f;\n  }\n",
                                f"zeros of {op.describe()} #{self.pos[n]}")
            self.launch(text, [["long", total], self.w(n)], total, [n])
        if size == 0:
            return
        strides = _strides(out_shape)
        base = sum(s[0] * st for s, st in zip(op.slices, strides))
        if _contiguous_block(op.slices, out_shape, g_shape):
            dst = "i"
        else:
            c = coords_of("i", g_shape)
            dst = offset_of([f"({ci}) * {s[2]}L" if s[2] != 1 else ci
                             for ci, s in zip(c, op.slices)], out_shape)
        self._block_copy(n, dst, "i", size, self.w(n, base), self.r(gy), op.describe())

    def _lower_Concat(self, n, op):
        out_shape = self.graph.shape(n)
        inner = math.prod(out_shape[op.axis + 1:])
        start, pieces = 0, []
        for j, a in enumerate(self.graph.args(n)):
            shape = self.graph.shape(a)
            size = math.prod(shape)
            if size and math.prod(out_shape[:op.axis]) == 1:
                step = self._block_copy(n, "i", "i", size, self.w(n, start * inner),
                                        self.r(a), f"part {j} of {op.describe()}")
                pieces.append((step, self.value(a), start * inner))
            elif size:
                dst = offset_of(coords_of("i", shape), out_shape)
                self._block_copy(n, dst, "i", size, self.w(n, start * inner), self.r(a),
                                 f"part {j} of {op.describe()}")
            start += shape[op.axis]
        if pieces:
            self._view_candidates().append(("concat", pieces, self.value(n), None, None))

    # GEMM on the CPU: C[b0, b1] = A[b0, b1] B[b0, b1] + beta C[b0, b1], strided A and B
    def gemm(self, nodes, a, b, c, nb, M, N, Kd, sa, sb, sc, beta=0.0):
        """a, b, c: value args; nb (nb0, nb1); sa (sAm, sAk, sA0, sA1); sb (sBk, sBn, sB0,
        sB1); sc (sC0, sC1)."""
        args = [["long", nb[0]], ["long", nb[1]], ["long", M], ["long", N], ["long", Kd],
                ["float", 1.0], ["float", beta], a] + [["long", s] for s in sa] + [b] + \
            [["long", s] for s in sb] + [c] + [["long", s] for s in sc]
        spec, nodes, boundary = self._template(T.GEMM_BLAS), list(nodes), ""
        if len(nodes) == 1 and beta == 0.0 and (nb[0] == 1 or sc[0] % N == 0) and \
                (nb[1] == 1 or sc[1] % N == 0) and \
                nb[0] * nb[1] * M * N == math.prod(self.graph.shape(nodes[0])):
            args, spec, nodes, boundary = self._apply_epilogue(nodes[0], spec, args, N, 17)
        step = self.launch(spec, args, 1, nodes, boundary=boundary)
        step.attrs["flops"] = 2 * nb[0] * nb[1] * M * N * Kd

    def gemv(self, nodes, a, b, c, M, N, Kd, sam, sbn, beta=0.0):
        """C (M x N, contiguous) = A B + beta C on the CPU for M <= T.GEMV_MAX_ROWS, A's
        rows sam apart and contiguous, B the transpose of N contiguous rows sbn apart."""
        args = [["long", M], ["long", N], ["long", Kd], ["float", beta], a, ["long", sam],
                b, ["long", sbn], c]
        spec, nodes, boundary = self._template(T.GEMV_CPU), list(nodes), ""
        if len(nodes) == 1 and beta == 0.0 and M * N == math.prod(self.graph.shape(nodes[0])):
            args, spec, nodes, boundary = self._apply_epilogue(nodes[0], spec, args, N, 8)
        step = self.launch(spec, args, 1, nodes, boundary=boundary)
        step.attrs["flops"] = 2 * M * N * Kd

    # GEMM on the CUDA backends: cuBLAS calls
    def device_gemm_rm(self, nodes, a, b, c, M, N, Kd, sa, sb, ldc, levels, beta=0.0):
        """Row-major C (M x N, rows ldc apart) = A (M x K, strides sa = (sAm, sAk)) times
        B (K x N, strides sb = (sBk, sBn)) + beta C, for every index of the batch
        ``levels`` [(count, stride of A, of B, of C), ...] (outermost first; offsets in
        elements from a, b, c). As column-major cuBLAS sees it, C^T (N x M) = B^T A^T:
        cuBLAS's A is our B and its B is our A. Levels merge where their strides allow;
        the largest remaining level is the call's batch and any others become separate
        calls."""
        levels = [list(lv) for lv in levels if lv[0] > 1]
        merged = True
        while merged:
            merged = False
            for i in range(len(levels) - 1):
                o, n_ = levels[i], levels[i + 1]
                if all(o[j] == n_[j] * n_[0] for j in (1, 2, 3)):
                    levels[i:i + 2] = [[o[0] * n_[0], n_[1], n_[2], n_[3]]]
                    merged = True
                    break
        batch = max(levels, key=lambda lv: lv[0]) if levels else [1, 0, 0, 0]
        loops = [lv for lv in levels if lv is not batch]
        transa, lda = _cublas_operand(N, Kd, sb[1], sb[0])    # B^T: N x K
        transb, ldb = _cublas_operand(Kd, M, sa[1], sa[0])    # A^T: K x M
        if M > 1 and ldc < N:
            raise ValueError(f"GEMM output rows {ldc} apart overlap ({N} columns)")
        attrs = {"transa": transa, "transb": transb, "m": N, "n": M, "k": Kd,
                 "alpha": 1.0, "beta": float(beta), "lda": lda, "ldb": ldb,
                 "ldc": ldc if M > 1 else max(1, N),
                 "strideA": batch[2], "strideB": batch[1], "strideC": batch[3],
                 "batch": batch[0]}
        for idx in _product([lv[0] for lv in loops]):
            oa, ob, oc = (sum(i * lv[j] for i, lv in zip(idx, loops)) for j in (1, 2, 3))
            self.sgemm(nodes, ["val", b[1], b[2] + ob, "r"], ["val", a[1], a[2] + oa, "r"],
                       ["val", c[1], c[2] + oc, "w"], dict(attrs))

    def _lower_MatMul(self, n, op):
        g = self.graph
        a, b = g.args(n)
        sa_, sb_, so = g.shape(a), g.shape(b), g.shape(n)
        M, Kd, N = sa_[-2], sa_[-1], sb_[-1]
        batch = so[:-2]
        dims = []
        for d, size in enumerate(batch):
            da = len(sa_) - 2 - len(batch) + d
            db = len(sb_) - 2 - len(batch) + d
            stA = math.prod(sa_[da + 1:]) if da >= 0 and sa_[da] == size and size > 1 else 0
            stB = math.prod(sb_[db + 1:]) if db >= 0 and sb_[db] == size and size > 1 else 0
            stC = math.prod(so[d + 1:])
            if size > 1:
                dims.append([size, stA, stB, stC])
        merged = []
        for d in dims:
            if merged and all(merged[-1][i] == d[i] * d[0] for i in (1, 2, 3)):
                merged[-1] = [merged[-1][0] * d[0], d[1], d[2], d[3]]
            else:
                merged.append(d)
        while len(merged) < 2:
            merged.insert(0, [1, 0, 0, 0])
        outer, inner = merged[:-2], merged[-2:]
        # operands that are transposes of the last two axes are read with swapped strides
        a_src, sa_mk = (self.views[a], (1, M)) if a in self.views else (a, (Kd, 1))
        b_src, sb_kn = (self.views[b], (1, Kd)) if b in self.views else (b, (N, 1))
        if self.device_gemm:
            self.device_gemm_rm([n], self.r(a_src), self.r(b_src), self.w(n), M, N, Kd, sa_mk,
                                sb_kn, N, merged)
            return
        if (not outer and inner[0][0] == inner[1][0] == 1 and M <= T.GEMV_MAX_ROWS
                and sa_mk[1] == 1 and sb_kn[0] == 1):
            # a few rows times transposed weights (a fully connected layer at a small
            # batch): the threads split the output columns, each row of B read once
            self.gemv([n], self.r(a_src), self.r(b_src), self.w(n), M, N, Kd, sa_mk[0],
                      sb_kn[1])
            return
        for idx in _product([m[0] for m in outer]):
            oa = sum(i * m[1] for i, m in zip(idx, outer))
            ob = sum(i * m[2] for i, m in zip(idx, outer))
            oc = sum(i * m[3] for i, m in zip(idx, outer))
            self.gemm([n], self.r(a_src, oa), self.r(b_src, ob), self.w(n, oc),
                      (inner[0][0], inner[1][0]), M, N, Kd,
                      sa_mk + (inner[0][1], inner[1][1]), sb_kn + (inner[0][2], inner[1][2]),
                      (inner[0][3], inner[1][3]))

    def _conv_dims(self, p, x_shape, k_hw, out_hw):
        return [["long", v] for v in (x_shape[1], x_shape[2], x_shape[3], k_hw[0], k_hw[1],
                                      p.pad[0], p.pad[1], p.stride[0], p.stride[1],
                                      p.dilation[0], p.dilation[1], out_hw[0], out_hw[1])]

    def _is_pointwise(self, p, k_hw):
        return tuple(k_hw) == (1, 1) and p.stride == (1, 1) and p.pad == (0, 0)

    def _im2col(self, n, x, p, k_hw, out_hw):
        """A value holding x as columns (N, C*kh*kw, oh*ow), or x itself for 1x1 kernels."""
        xs = self.graph.shape(x)
        if self._is_pointwise(p, k_hw):
            return ["val", self.value(x), 0, "r"]
        key = (x, p.stride, p.pad, p.dilation, tuple(k_hw))
        if key in self.cols:            # a convolution and its weight gradient share it
            return ["val", self.cols[key], 0, "r"]
        rows = xs[0] * xs[1] * k_hw[0] * k_hw[1]
        size = rows * out_hw[0] * out_hw[1]
        col = self.cols[key] = self.new_value(size, "temp", "col")
        self.launch(self._template(T.IM2COL), [["long", rows], self.r(x), ["val", col, 0, "w"]] +
                    self._conv_dims(p, xs, k_hw, out_hw), rows, [n])
        return ["val", col, 0, "r"]

    # Convolutions on the CUDA backends: columns of the whole batch, (rows, N*oh*ow)
    def _batch_to_cols(self, n, src, NB, R, P, name):
        """src (NB, R, P) as a new value (R, NB*P)."""
        dst = self.new_value(NB * R * P, "temp", name)
        size = NB * R * P
        self.launch(self._template(T.BATCH_TO_COLS), [["long", size], src, ["val", dst, 0, "w"],
                    ["long", NB], ["long", R], ["long", P]], size, [n])
        return ["val", dst, 0, "r"]

    def _device_cols(self, n, x, p, k_hw, out_hw, folded=False):
        """x's im2col columns for the device GEMMs as (value arg, row stride, image
        stride): (C*kh*kw, N*oh*ow), or x itself (C, oh*ow) per image for a 1x1 kernel,
        unless ``folded`` asks for one matrix over the batch (the weight gradient)."""
        N, C, H, W = self.graph.shape(x)
        P = out_hw[0] * out_hw[1]
        if self._is_pointwise(p, k_hw) and (N == 1 or not folded):
            return self.r(x), P, C * P
        key = (x, p.stride, p.pad, p.dilation, tuple(k_hw), "device")
        if key not in self.cols:        # a convolution and its weight gradient share it
            if self._is_pointwise(p, k_hw):
                self.cols[key] = self._batch_to_cols(n, self.r(x), N, C, P, "col")[1]
            else:
                rows = C * k_hw[0] * k_hw[1]
                col = self.cols[key] = self.new_value(rows * N * P, "temp", "col")
                size = rows * N * P
                self.launch(self._template(T.IM2COL_COLS), [["long", size], self.r(x),
                            ["val", col, 0, "w"], ["long", N]] +
                            self._conv_dims(p, (N, C, H, W), k_hw, out_hw), size, [n])
        return ["val", self.cols[key], 0, "r"], N * P, P

    def _by_image(self, N, p, k_hw):
        """Whether a convolution runs image by image (CPU, a kernel wider than 1x1, at
        least an image per thread): each image's columns stay in cache beside its GEMM."""
        return not self.device_gemm and N >= self.threads and not self._is_pointwise(p, k_hw)

    def _images(self, template, n, args, per_thread, geometry, flops, shared=0):
        scratch = ["val", self.new_value(shared + self.threads * per_thread, "temp", "scratch"),
                   0, "w"]
        spec, nodes, boundary = self._template(template), [n], ""
        args = args[:3] + [scratch] + args[3:] + [["long", v] for v in geometry[:2]] + \
            [["long", self.threads]] + geometry[2]
        if template in (T.CONV_CPU, T.CONV_PANEL_CPU):  # output rows, oh * ow long
            args, spec, nodes, boundary = self._apply_epilogue(
                n, spec, args, geometry[2][-2][1] * geometry[2][-1][1], 2)
        step = self.launch(spec, args, 1, nodes, boundary=boundary)
        step.attrs["flops"] = flops

    @staticmethod
    def _padded_planes(channels, oh, ow, k_hw, dilation):
        """Values of the explicitly padded input planes a stride-1 panel convolution
        reads directly (templates._direct_gemm)."""
        return channels * (oh + (k_hw[0] - 1) * dilation[0]) * (ow + (k_hw[1] - 1) * dilation[1])

    def _apply_epilogue(self, n, spec, args, row_len, out_index):
        """The library kernel ``spec`` with ``args`` applying n's pending epilogue, if
        any: (args, spec, nodes, boundary)."""
        args, params, body, e = self._epilogue(n, args, spec.params, spec.body, row_len,
                                               out_index)
        if e is None:
            return args, spec, [n], ""
        spec = K.KernelText(spec.base_name, tuple(params), body, spec.comment, spec.block)
        return args, spec, [n] + list(e.needed), "epilogue applied to each piece of the " \
            "GEMM's output: " + self._boundary(e)

    def _direct_group(self, G, cin, cout, widths):
        """Whether a grouped convolution with ``cin`` input and ``cout`` output channels
        per group runs as a direct kernel (no columns, no GEMM per group): groups of at
        most DIRECT_GROUP_CHANNELS channels (depthwise convolutions among them), where
        a GEMM of so few rows and so short a sum is slower (see the constants); on the
        CPU, images whose ``widths`` (input and output) are at most DIRECT_MAX_WIDTH_CPU."""
        if self.backend == "cpu":
            return G > 1 and max(cin, cout) <= DIRECT_GROUP_CHANNELS_CPU and \
                max(widths) <= DIRECT_MAX_WIDTH_CPU
        return G > 1 and max(cin, cout) <= DIRECT_GROUP_CHANNELS

    def _conv_direct(self, n, out_shape, geometry, flops):
        """y = conv2d(x, w) as CONV_DIRECT: a thread per output element on CUDA, per
        output plane on the CPU."""
        g = self.graph
        size = math.prod(out_shape)
        xw = g.args(n)
        args = [["long", size], self.r(xw[0]), self.r(xw[1]), self.w(n)] + geometry
        spec, nodes, boundary = self._template(T.CONV_DIRECT), [n], ""
        if self.backend == "cpu":       # rows of the output plane (the CPU variant)
            args, spec, nodes, boundary = self._apply_epilogue(
                n, spec, args, out_shape[2] * out_shape[3], 3)
        step = self.launch(spec, args, size, nodes, boundary=boundary)
        step.attrs["flops"] = flops

    def _lower_Conv2d(self, n, op):
        g = self.graph
        x, w = g.args(n)
        (N, C, H, W), (O, Cg, kh, kw), (_, _, oh, ow) = g.shape(x), g.shape(w), g.shape(n)
        G, P, Kd = op.p.group, oh * ow, Cg * kh * kw
        if self._direct_group(G, Cg, O // G, (W, ow)):
            self._conv_direct(n, (N, O, oh, ow), [["long", O], ["long", G]] +
                              self._conv_dims(op.p, (N, C, H, W), (kh, kw), (oh, ow)),
                              2 * N * O * Kd * P)
            return
        if self.backend == "cpu" and WG.applicable(op, g.shape(x), g.shape(w)):
            m = WG.choose(N, C, O, H, W, oh, ow, self.threads)
            if m:
                WG.lower_conv(self, n, m)
                return
        if self._by_image(N, op.p, (kh, kw)):
            if CONV_PANELS and Kd >= PANEL_MIN_TAPS and op.p.stride == (1, 1) and ow % 8 == 0:
                self._images(T.CONV_PANEL_CPU, n, [self.r(x), self.r(w), self.w(n), ["long", O]],
                             self._padded_planes(C // G, oh, ow, (kh, kw), op.p.dilation),
                             (N, G, self._conv_dims(op.p, (N, C, H, W), (kh, kw), (oh, ow))),
                             2 * N * O * Kd * P)
                return
            self._images(T.CONV_CPU, n, [self.r(x), self.r(w), self.w(n), ["long", O]],
                         C * kh * kw * P, (N, G, self._conv_dims(op.p, (N, C, H, W), (kh, kw),
                                                                 (oh, ow))),
                         2 * N * O * Kd * P)
            return
        M = O // G
        if self.device_gemm:    # y[b, g] = w[g] (M x Kd) cols[g, b] (Kd x P)
            col, ld, img = self._device_cols(n, x, op.p, (kh, kw), (oh, ow))
            self.device_gemm_rm([n], self.r(w), col, self.w(n), M, P, Kd, (Kd, 1), (ld, 1), P,
                                [(N, 0, img, O * P), (G, M * Kd, Kd * ld, M * P)])
            return
        col = self._im2col(n, x, op.p, (kh, kw), (oh, ow))
        self.gemm([n], self.r(w), col, self.w(n), (N, G), M, P, Kd,
                  (Kd, 1, 0, M * Kd), (P, 1, G * Kd * P, Kd * P), (O * P, M * P))

    def _lower_ConvTranspose2d(self, n, op):
        g = self.graph
        x, w = g.args(n)
        (N, Ci, h, wd), (_, Og, kh, kw), (_, Co, H, W) = g.shape(x), g.shape(w), g.shape(n)
        G, P = op.p.group, h * wd
        Kd, M = Ci // G, Og * kh * kw
        if self._direct_group(G, Og, Kd, (W, wd)):
            size = N * Co * H * W
            step = self.launch(self._template(T.CONV_T_DIRECT),
                               [["long", size], self.r(x), self.r(w), self.w(n), ["long", Ci],
                                ["long", G]] + self._conv_dims(op.p, (N, Co, H, W), (kh, kw),
                                                               (h, wd)), size, [n])
            step.attrs["flops"] = 2 * N * G * M * Kd * P
            return
        if self._by_image(N, op.p, (kh, kw)) and CONV_PANELS and op.p.stride == (1, 1) and \
                op.p.pad[0] <= (kh - 1) * op.p.dilation[0] and \
                op.p.pad[1] <= (kw - 1) * op.p.dilation[1] and Og >= 8 and \
                10 * H * W <= 11 * P and W % 8 == 0:
            # a convolution of x with the flipped kernel (CONV_T_PANEL_CPU), when its
            # output is about as large as x (a "same" padding; otherwise it multiplies
            # the zeros around x too, 2.25x the work for LeNet's 5x5 on 8x8, measured 6.8
            # against 2.0 ms) and rows a multiple of 8 wide; with fewer than 8 output
            # channels per group most of its 8-row tiles would be wasted (3 channels of
            # 32x32 from 32 at batch 100: 31 against 6.5 ms)
            Kg = Kd * kh * kw
            self._images(T.CONV_T_PANEL_CPU, n, [self.r(x), self.r(w), self.w(n), ["long", Ci]],
                         self._padded_planes(Kd, H, W, (kh, kw), op.p.dilation),
                         (N, G, self._conv_dims(op.p, (N, Co, H, W), (kh, kw), (h, wd))),
                         2 * N * G * M * Kd * P, shared=Co * Kg)
            return
        if self._by_image(N, op.p, (kh, kw)):
            self._images(T.CONV_T_CPU, n, [self.r(x), self.r(w), self.w(n), ["long", Ci]],
                         G * M * P, (N, G, self._conv_dims(op.p, (N, Co, H, W), (kh, kw),
                                                          (h, wd))),
                         2 * N * G * M * Kd * P)
            return
        direct = self._is_pointwise(op.p, (kh, kw))
        if self.device_gemm:
            self._device_conv_transpose(n, op, direct)
            return
        col = self.w(n) if direct else ["val", self.new_value(N * G * M * P, "temp", "col"), 0,
                                         "w"]
        self.gemm([n], self.r(w), self.r(x), col, (N, G), M, P, Kd,
                  (1, M, 0, Kd * M), (P, 1, Ci * P, Kd * P), (G * M * P, M * P))
        if not direct:
            size = N * Co * H * W
            self.launch(self._template(T.COL2IM), [["long", size], ["val", col[1], 0, "r"], self.w(n)] +
                        self._conv_dims(op.p, (N, Co, H, W), (kh, kw), (h, wd)), size, [n])

    def _device_conv_transpose(self, n, op, direct):
        """cols[g, b] (M x P) = w[g]^T (M x Kd) x[b, g] (Kd x P) for the columns
        (Co*kh*kw, N*h*w) (or y itself for a 1x1 kernel), then col2im."""
        g = self.graph
        x, w = g.args(n)
        (N, Ci, h, wd), (_, Og, kh, kw), (_, Co, H, W) = g.shape(x), g.shape(w), g.shape(n)
        G, P = op.p.group, h * wd
        Kd, M = Ci // G, Og * kh * kw
        if direct:
            out, ld, img = self.w(n), P, Co * P
        else:
            out, ld, img = ["val", self.new_value(G * M * N * P, "temp", "col"), 0, "w"], \
                N * P, P
        self.device_gemm_rm([n], self.r(w), self.r(x), out, M, P, Kd, (1, M), (P, 1), ld,
                            [(N, 0, Ci * P, img), (G, Kd * M, Kd * P, M * ld)])
        if not direct:
            size = N * Co * H * W
            self.launch(self._template(T.COL2IM_COLS), [["long", size], ["val", out[1], 0, "r"],
                        self.w(n), ["long", N]] +
                        self._conv_dims(op.p, (N, Co, H, W), (kh, kw), (h, wd)), size, [n])

    def _device_weight_grad(self, n, op):
        """gw[g] (M x Kd) = gy[g] (M x N*P) cols[g]^T (N*P x Kd): one GEMM per call with
        the batch folded into K, batched over the groups; gy is laid out (O, N*P)."""
        g = self.graph
        x, gy = g.args(n)
        (N, C, _, _), (_, O, oh, ow) = g.shape(x), g.shape(gy)
        kh, kw = op.kernel_hw
        G, P = op.p.group, oh * ow
        Kd, M, NP = C // G * kh * kw, O // G, N * oh * ow
        col, ld, _ = self._device_cols(n, x, op.p, (kh, kw), (oh, ow), folded=True)
        assert ld == NP
        gyt = self.r(gy) if N == 1 else self._batch_to_cols(n, self.r(gy), N, O, P, "gy_cols")
        self.device_gemm_rm([n], gyt, col, self.w(n), M, Kd, NP, (NP, 1), (1, NP), Kd,
                            [(G, M * NP, Kd * NP, M * Kd)])

    def _lower_ConvWeightGrad(self, n, op):
        g = self.graph
        x, gy = g.args(n)
        (N, C, _, _), (_, O, oh, ow) = g.shape(x), g.shape(gy)
        kh, kw = op.kernel_hw
        G, P = op.p.group, oh * ow
        Kd, M = C // G * kh * kw, O // G
        if self._direct_group(G, C // G, M, (g.shape(x)[3], ow)):
            rows = O * Kd
            t = self._template(T.CONV_WGRAD_DIRECT)
            step = self.launch(t, [["long", rows], self.r(x), self.r(gy), self.w(n), ["long", O],
                                   ["long", G], ["long", N]] +
                               self._conv_dims(op.p, g.shape(x), (kh, kw), (oh, ow)),
                               rows * t.block, [n])
            step.attrs["flops"] = 2 * N * O * Kd * P
            return
        if self.device_gemm:
            self._device_weight_grad(n, op)
            return
        if self._by_image(N, op.p, (kh, kw)) and CONV_PANELS and M >= PANEL_MIN_OUTPUTS and \
                Kd >= PANEL_MIN_TAPS:
            xs = g.shape(x)
            self._images(T.CONV_WGRAD_PANEL_CPU, n, [self.r(x), self.r(gy), self.w(n),
                                                     ["long", O]],
                         C * ((oh - 1) * op.p.stride[0] + (kh - 1) * op.p.dilation[0] + 1) *
                         ((ow - 1) * op.p.stride[1] + (kw - 1) * op.p.dilation[1] + 1) +
                         -(-M // 32) * 32 * P + O * Kd,
                         (N, G, self._conv_dims(op.p, xs, (kh, kw), (oh, ow))),
                         2 * N * O * Kd * P)
            return
        if self._by_image(N, op.p, (kh, kw)):
            xs = g.shape(x)
            self._images(T.CONV_WGRAD_CPU, n, [self.r(x), self.r(gy), self.w(n), ["long", O]],
                         C * kh * kw * P + O * Kd, (N, G, self._conv_dims(op.p, xs, (kh, kw),
                                                                           (oh, ow))),
                         2 * N * O * Kd * P)
            return
        col = self._im2col(n, x, op.p, (kh, kw), (oh, ow))
        if N == 1:
            self.gemm([n], self.r(gy), col, self.w(n), (1, G), M, Kd, P,
                      (P, 1, 0, M * P), (1, P, 0, Kd * P), (0, M * Kd))
            return
        # per-thread sums of the images' products
        args = [["long", N], ["long", G], ["long", M], ["long", Kd], ["long", P],
                self.r(gy), ["long", P], ["long", 1], ["long", O * P], ["long", M * P],
                col, ["long", 1], ["long", P], ["long", G * Kd * P], ["long", Kd * P],
                self.w(n), ["long", M * Kd],
                ["val", self.new_value(self.threads * G * M * Kd, "temp", "scratch"), 0,
                 "w"], ["long", self.threads]]
        step = self.launch(self._template(T.GEMM_BLAS_SUM), args, 1, [n])
        step.attrs["flops"] = 2 * N * G * M * Kd * P

    # Caffe's im2col and col2im as ops (the Im2col layer): columns (N, C*kh*kw, oh*ow)
    def _lower_Im2col(self, n, op):
        """The CPU: IM2COL, a work item per column row (image, c, ki, kj) writing its
        contiguous run of oh*ow. CUDA: IM2COL_COLS with the batch taken as channels
        (NB = 1, C = N*C: its rows (c', ki, kj) are then exactly (N, C*kh*kw)), a thread
        per column entry, so a warp's stores are contiguous. Both only copy."""
        (x,) = self.graph.args(n)
        N, C, H, W = self.graph.shape(x)
        oh, ow = self.graph.shape(n)[2:]
        rows = N * C * op.kernel_hw[0] * op.kernel_hw[1]
        if self.backend == "cpu":
            self.launch(self._template(T.IM2COL), [["long", rows], self.r(x), self.w(n)] +
                        self._conv_dims(op.p, (N, C, H, W), op.kernel_hw, (oh, ow)), rows, [n])
            return
        size = rows * oh * ow
        self.launch(self._template(T.IM2COL_COLS), [["long", size], self.r(x), self.w(n),
                    ["long", 1]] + self._conv_dims(op.p, (1, N * C, H, W), op.kernel_hw,
                                                   (oh, ow)), size, [n])

    def _lower_Col2im(self, n, op):
        """COL2IM over the whole batch: on the CPU its variant (a work item per (image,
        channel) plane, zeroed, then each tap's columns added in (ki, kj) order), on CUDA
        a thread per pixel gathering its taps in (ki, kj) order (no atomics): the same
        sums in the same order as Col2im's reference."""
        (col,) = self.graph.args(n)
        N, C, H, W = self.graph.shape(n)
        oh, ow = self.graph.shape(col)[2:]
        size = N * C * H * W
        self.launch(self._template(T.COL2IM), [["long", size], self.r(col), self.w(n)] +
                    self._conv_dims(op.p, (N, C, H, W), op.kernel_hw, (oh, ow)), size, [n])

    def _pool_dims(self, p, x_shape, out_shape):
        return [["long", v] for v in (x_shape[2], x_shape[3], out_shape[2], out_shape[3],
                                      p.kernel[0], p.kernel[1], p.stride[0], p.stride[1],
                                      p.pad[0], p.pad[1])]

    def _needs_mask(self, x, key):
        for c in self.graph.nx.successors(x):
            op = self.graph.op(c)
            if c in self.pos and isinstance(op, (ops.MaxPoolGrad, ops.MaxPoolSelect)) and \
                    op.p.as_dict() == key:
                return True
        return False

    def _lower_Pool2d(self, n, op):
        g = self.graph
        (x,) = g.args(n)
        size = math.prod(g.shape(n))
        dims = self._pool_dims(op.p, g.shape(x), g.shape(n))
        if op.how == "ave":
            self.launch(self._template(T.AVEPOOL), [["long", size], self.r(x), self.w(n)] + dims,
                        size, [n])
            return
        key = op.p.as_dict()
        mask = ["null"]
        if self._needs_mask(x, key):
            mv = self.new_value(size, "temp", "argmax")
            self.masks[(x, tuple(sorted(key.items())))] = mv
            mask = ["val", mv, 0, "w"]
        elif self.backend == "cpu":
            # nothing in this plan reads the argmax: values alone
            self.launch(self._template(T.MAXPOOL_VALUE_CPU), [["long", size], self.r(x),
                        self.w(n)] + dims, size, [n])
            return
        self.launch(self._template(T.MAXPOOL), [["long", size], self.r(x), self.w(n), mask] + dims,
                    size, [n])

    def _mask_for(self, n, x, p):
        key = (x, tuple(sorted(p.as_dict().items())))
        if key not in self.masks:
            xs = self.graph.shape(x)
            out = (xs[0], xs[1], p.out_len(xs[2], 0), p.out_len(xs[3], 1))
            size = math.prod(out)
            y, mv = self.new_value(size, "temp", "pool"), self.new_value(size, "temp", "argmax")
            self.launch(self._template(T.MAXPOOL), [["long", size], self.r(x),
                        ["val", y, 0, "w"], ["val", mv, 0, "w"]] + self._pool_dims(p, xs, out),
                        size, [n])
            self.masks[key] = mv
        return ["val", self.masks[key], 0, "r"]

    def _lower_MaxPoolGrad(self, n, op):
        x, gy = self.graph.args(n)
        mask = self._mask_for(n, x, op.p)
        size = math.prod(self.graph.shape(n))
        p = op.p
        disjoint = p.stride[0] >= p.kernel[0] and p.stride[1] >= p.kernel[1]
        dims = self._pool_dims(op.p, self.graph.shape(x), self.graph.shape(gy))
        self.launch(self._template(T.MAXPOOL_GRAD_DISJOINT if disjoint else T.MAXPOOL_GRAD),
                    [["long", size], mask, self.r(gy), self.w(n)] + dims, size, [n])

    def _lower_MaxPoolSelect(self, n, op):
        x, gx = self.graph.args(n)
        mask = self._mask_for(n, x, op.p)
        xs, os_ = self.graph.shape(x), self.graph.shape(n)
        size = math.prod(os_)
        self.launch(self._template(T.MAXPOOL_SELECT),
                    [["long", size], mask, self.r(gx), self.w(n)] +
                    [["long", v] for v in (xs[2], xs[3], os_[2], os_[3])], size, [n])

    def _lower_AvePoolGrad(self, n, op):
        (gy,) = self.graph.args(n)
        size = math.prod(op.in_shape)
        dims = self._pool_dims(op.p, op.in_shape, self.graph.shape(gy))
        self.launch(self._template(T.AVEPOOL_GRAD), [["long", size], self.r(gy), self.w(n)] + dims,
                    size, [n])

    def _axis_view(self, shape, axis):
        return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])

    def _lower_WindowSum(self, n, op):
        (x,) = self.graph.args(n)
        shape = self.graph.shape(x)
        _, L, inner = self._axis_view(shape, op.axis)
        size = math.prod(shape)
        self.launch(self._template(T.WINDOW_SUM), [["long", size], self.r(x), self.w(n),
                    ["long", L], ["long", inner], ["long", op.before], ["long", op.after]],
                    size, [n])

    def _lower_LRN(self, n, op):
        (x,) = self.graph.args(n)
        N, C, H, W = self.graph.shape(x)
        size = N * C * H * W
        pre = (op.size - 1) // 2
        dims = [["long", C], ["long", H * W]] if op.region == "across" else \
            [["long", H], ["long", W]]
        t = T.lrn_template(op.region, self.backend == "cpu", op.size, op.coeff, op.k,
                           op.beta)
        self.launch(self._template(t), [["long", size], self.r(x), self.w(n)] + dims +
                    [["long", pre]], size, [n])

    def _lower_Gather(self, n, op):
        x, idx = self.graph.args(n)
        _, L, inner = self._axis_view(self.graph.shape(x), op.axis)
        Kd = self.graph.shape(idx)[op.axis]
        size = math.prod(self.graph.shape(n))
        self.launch(self._template(T.GATHER), [["long", size], self.r(x), self.r(idx), self.w(n),
                    ["long", L], ["long", Kd], ["long", inner]], size, [n])

    def _lower_GatherGrad(self, n, op):
        idx, gy = self.graph.args(n)
        _, L, inner = self._axis_view(op.x_shape, op.axis)
        Kd = self.graph.shape(idx)[op.axis]
        size = math.prod(op.x_shape)
        self.launch(self._template(T.GATHER_GRAD), [["long", size], self.r(idx), self.r(gy),
                    self.w(n), ["long", L], ["long", Kd], ["long", inner]], size, [n])

    def _lower_ArgTopK(self, n, op):
        (x,) = self.graph.args(n)
        outer, L, inner = self._axis_view(self.graph.shape(x), op.axis)
        size = outer * inner
        self.launch(self._template(T.ARGTOPK), [["long", size], self.r(x), self.w(n),
                    ["long", L], ["long", op.k], ["long", inner]], size, [n])

    def _lower_RandomUniform(self, n, op):
        args = self.graph.args(n)
        size = math.prod(op.shape)
        counter = self.r(args[0]) if args else ["null"]
        self.launch(self._template(T.RANDOM_UNIFORM), [["long", size], self.w(n), counter,
                    ["long", op.seed & 0xFFFFFFFF], ["long", op.seed >> 32]], size, [n])

    def _lower_MaxPoolArgmax(self, n, op):
        """MAX pooling's mask as a value of its own (a Pooling layer's second top); the
        pooled values go to a scratch buffer. A gradient of the same pooling in this
        plan reads this mask instead of computing its own."""
        (x,) = self.graph.args(n)
        xs, out = self.graph.shape(x), self.graph.shape(n)
        size = math.prod(out)
        y = self.new_value(size, "temp", "pool")
        self.launch(self._template(T.MAXPOOL), [["long", size], self.r(x), ["val", y, 0, "w"],
                    self.w(n)] + self._pool_dims(op.p, xs, out), size, [n])
        self.masks.setdefault((x, tuple(sorted(op.p.as_dict().items()))), self.value(n))

    def _lower_StochasticPoolSample(self, n, op):
        x, u = self.graph.args(n)
        xs, out = self.graph.shape(x), self.graph.shape(n)
        size = math.prod(out)
        p = op.p
        self.launch(self._template(T.STOCHASTIC_POOL_SAMPLE),
                    [["long", size], self.r(x), self.r(u), self.w(n)] +
                    [["long", v] for v in (xs[2], xs[3], out[2], out[3], p.kernel[0],
                                           p.kernel[1], p.stride[0], p.stride[1])],
                    size, [n])

    def _lower_PoolIndexSelect(self, n, op):
        idx, x = self.graph.args(n)
        xs, os_ = self.graph.shape(x), self.graph.shape(n)
        size = math.prod(os_)
        self.launch(self._template(T.MAXPOOL_SELECT),
                    [["long", size], self.r(idx), self.r(x), self.w(n)] +
                    [["long", v] for v in (xs[2], xs[3], os_[2], os_[3])], size, [n])

    def _lower_PoolIndexGrad(self, n, op):
        idx, gy = self.graph.args(n)
        size = math.prod(op.in_shape)
        p = op.p
        disjoint = p.stride[0] >= p.kernel[0] and p.stride[1] >= p.kernel[1]
        dims = self._pool_dims(p, op.in_shape, self.graph.shape(gy))
        self.launch(self._template(T.MAXPOOL_GRAD_DISJOINT if disjoint else T.MAXPOOL_GRAD),
                    [["long", size], self.r(idx), self.r(gy), self.w(n)] + dims, size, [n])

    # Caffe Python layers: host steps calling the layer once for all its tops
    def host(self, name, args, nodes, callback):
        self.callbacks[name] = callback
        modes = [a[3] for a in args]
        sizes = [self.vsize[a[1]] for a in args]
        reads = [a for a in args if a[3] == "r"]
        writes = [a for a in args if a[3] == "w"]
        step = Step("host", name, [a[:3] for a in args], ops=[self._op_name(n) for n in nodes],
                    bytes_read=4 * sum(self.vsize[a[1]] for a in _unique(reads)),
                    bytes_written=4 * sum(self.vsize[a[1]] for a in _unique(writes)),
                    boundary="a Python layer runs on the host",
                    attrs={"modes": modes, "sizes": sizes, "layers": self._layers_of(nodes)})
        step.attrs["_rw"] = [[a[1], a[3]] for a in args]
        self.steps.append(step)

    def _value_or_scratch(self, n, shape, name):
        if n is not None and n in self.pos:
            return self.w(n)
        return ["val", self.new_value(math.prod(shape), "temp", name), 0, "w"]

    def _lower_PythonTop(self, n, op):
        runner = op.runner
        if ("fwd", id(runner)) in self._host_done:
            return
        self._host_done.add(("fwd", id(runner)))
        args = self.graph.args(n)
        tops = [t.id for t in runner.top_tensors]
        writes = [self._value_or_scratch(t, s, "pytop") for t, s in zip(tops, runner.top_shapes)]
        nb = len(runner.bottom_shapes)

        def call(views, runner=runner, nb=nb, nt=len(tops)):
            runner.forward_into(views[:nb], views[len(views) - nt:])
        self.host(f"py_{_ident(runner.name)}_forward", [self.r(a) for a in args[:nb]] + writes,
                  [t for t in tops if t in self.pos], call)

    def _lower_PythonGrad(self, n, op):
        runner, k = op.runner, op.k
        key = ("bwd", id(runner), k)
        if key in self._host_done:
            return
        self._host_done.add(key)
        args = self.graph.args(n)
        na = runner.n_args
        siblings = {}
        for c in self.graph.nx.successors(args[-1]):
            cop = self.graph.op(c)
            if c in self.pos and isinstance(cop, ops.PythonGrad) and cop.runner is runner \
                    and cop.k == k:
                siblings[cop.i] = c
        wanted = sorted(siblings)
        reads = [self.r(a) for a in args]

        def call(views, runner=runner, k=k, na=na, nt=len(runner.top_shapes), wanted=wanted):
            arg_views, top_views = views[:na], views[na:na + nt]
            g = views[na + nt]
            grads = [None] * na
            for j, i in enumerate(wanted):
                grads[i] = views[na + nt + 1 + j]
            runner.backward_into(arg_views, top_views, k, g, wanted, grads)
        self.host(f"py_{_ident(runner.name)}_backward_top{k}",
                  reads + [self.w(siblings[i]) for i in wanted],
                  [siblings[i] for i in wanted], call)

    # ------------------------------------------------------------ plan
    def _place_views(self):
        """Contiguous slices and concat pieces without copies, decided once every step
        is known: a slice's value becomes a view into its source at an offset, and a
        concat's piece is computed in its place in the concat's memory; the copy step
        is dropped. ``self._place`` maps a value to (the value it lives in, offset);
        buffers are given to the values at the root of these chains.

        A slice becomes a view when its value is a temporary written only by its copy
        and nothing writes the memory it would view after the copy. A piece is placed
        when it is a temporary not placed elsewhere (a value in two concats, or twice
        in one, is copied the second time) and the concat is a temporary: a computed
        output keeps its pieces' copies, since the caller may bind an output to an
        input's memory, which the pieces would overwrite early. Pieces take disjoint
        parts of the concat's memory, so writing one never touches another's. A concat
        of views, in order and adjacent, of one value is a view of that value."""
        self._place = place = {}
        cands = self.__dict__.get("_view_cands")
        if not cands:
            return
        index = {id(st): i for i, st in enumerate(self.steps)}
        writes, last = {}, {}
        for i, st in enumerate(self.steps):
            for v, mode in st.attrs["_rw"]:
                if mode == "w":
                    writes.setdefault(v, []).append(i)
                    last[v] = i
        outputs = set(self.output_values)
        drop, hosts = set(), set()      # hosts: values others are placed in

        def root(v):
            off = 0
            while v in place:
                v, o = place[v]
                off += o
            return v, off

        for kind, st, a, b, off in cands:
            if kind == "concat":
                self._place_concat(st, a, place, writes, last, outputs, drop, hosts, root,
                                   index)
                continue
            i = index[id(st)]
            dst, src = a, b
            r, _ = root(src)
            if dst in outputs or self.vrole[dst] != "temp" or dst in place or \
                    writes.get(dst) != [i] or last.get(r, -1) > i or dst in hosts:
                continue
            place[dst] = (src, off)
            hosts.add(src)
            last.pop(dst, None)
            drop.add(id(st))
        self.steps = [st for st in self.steps if id(st) not in drop]
        self._roots = {v: root(v) for v in place}

    def _place_concat(self, pieces, whole, place, writes, last, outputs, drop, hosts, root,
                      index):
        """A concat whose pieces are views, in order and adjacent, of one value is a
        view of that value; otherwise each piece that can is computed in place."""
        if whole in outputs or whole in place or whole in hosts or \
                self.vrole[whole] != "temp":
            return
        steps = [index[id(st)] for st, _, _ in pieces]
        roots = [root(v) for _, v, _ in pieces]
        r0, base = roots[0]
        if all(v in place for _, v, _ in pieces) and \
                all(r == r0 and o == base + off for (r, o), (_, _, off) in zip(roots, pieces)) \
                and sorted(writes.get(whole, [])) == sorted(steps) and \
                last.get(r0, -1) <= min(steps):
            place[whole] = (r0, base)
            hosts.add(r0)
            last.pop(whole, None)
            drop.update(id(st) for st, _, _ in pieces)
            return
        for st, piece, off in pieces:
            if piece in outputs or piece in place or self.vrole[piece] != "temp" or \
                    self.vsize[piece] + off > self.vsize[whole]:
                continue
            place[piece] = (whole, off)
            hosts.add(whole)
            # the concat's memory is now written where the piece is computed
            last[whole] = max(last.get(whole, -1), last.get(piece, -1))
            drop.add(id(st))

    def _root(self, v):
        """(value holding v's memory, offset of v in it)."""
        return self._roots.get(v, (v, 0)) if getattr(self, "_roots", None) else (v, 0)

    def plan(self) -> Plan:
        self._place_views()
        # steps computed from params alone, over the values that hold the memories
        # (a view or a concat piece counts as its host's)
        param_pos = {v: k for k, (_, v) in enumerate(self.params)}
        self.derived, self.persistent = param_derived(
            [[(self._root(v)[0], m) for v, m in st.attrs["_rw"]] for st in self.steps],
            [st.kind for st in self.steps], self.vrole, param_pos,
            {self._root(v)[0] for v in self.output_values})
        slot_of, slot_size = self._assign_slots()
        buffers = []
        buf_of = {}
        # each computed output gets a buffer of its own, which the runtime binds to the
        # caller's array (out=) so kernels write results in place
        for v in dict.fromkeys(self.output_values):
            if self.vrole[v] == "temp":
                self.vrole[v] = "output"
        for v in range(len(self.vsize)):
            if self.vrole[v] != "temp":
                buf_of[v] = len(buffers)
                buffers.append(Buffer(len(buffers), self.vsize[v], self.vrole[v], self.vname[v]))
        first_slot = len(buffers)
        for s, size in enumerate(slot_size):
            buffers.append(Buffer(first_slot + s, size, "temp"))
        for v, s in slot_of.items():
            buf_of[v] = first_slot + s
        for st in self.steps:
            st.args = [["buf", buf_of[self._root(a[1])[0]], a[2] + self._root(a[1])[1]]
                       if a[0] == "val" else a for a in st.args]
            st.attrs.pop("_rw", None)
        source = self.module_source()
        return Plan(self.backend, buffers, self.steps, self.kinfo,
                    [buf_of[v] for v in self.input_values],
                    [[n, buf_of[v]] for n, v in self.params],
                    [(buf_of[v], self.graph.shape(o)) for v, o in
                     zip(self.output_values, self._output_nodes())],
                    {buf_of[v]: a for v, a in self.constants.items()},
                    {self.backend: source}, derived=self.derived)

    def _output_nodes(self):
        return self.part.outputs_in_order

    def _assign_slots(self):
        start, end = {}, {}
        for i, st in enumerate(self.steps):
            for v, mode in st.attrs["_rw"]:
                v = self._root(v)[0]
                if self.vrole[v] != "temp":
                    continue
                start.setdefault(v, i)
                end[v] = i
        dedicated = {v for v in self.output_values if self.vrole[v] == "temp"}
        # each value takes the free slot (free before it starts) closest to its size,
        # the lowest-numbered among equals, else a new slot: free slots sorted by
        # (size, slot), busy ones in a heap by the step they are free after
        slot_of, slot_size = {}, []
        free, busy = [], []
        for v in sorted(start, key=lambda v: (start[v], v)):
            if v in dedicated:
                continue
            if v in getattr(self, "persistent", ()):    # param-derived: kept between calls
                slot_of[v] = len(slot_size)
                slot_size.append(self.vsize[v])
                continue
            while busy and busy[0][0] < start[v]:
                _, s = heapq.heappop(busy)
                bisect.insort(free, (slot_size[s], s))
            size = self.vsize[v]
            best = None
            j = bisect.bisect_left(free, (size, -1))
            cands = []
            if j < len(free):           # the smallest size >= size, its lowest slot
                cands.append(free[j])
            if j > 0:                   # the largest size < size, its lowest slot
                below = free[j - 1][0]
                cands.append(free[bisect.bisect_left(free, (below, -1))])
            if cands:
                best = min(cands, key=lambda c: (abs(c[0] - size), c[1]))
                free.remove(best)
                best = best[1]
            else:
                slot_size.append(size)
                best = len(slot_size) - 1
            slot_size[best] = max(slot_size[best], size)
            heapq.heappush(busy, (end[v], best))
            slot_of[v] = best
        return slot_of, slot_size

    def module_source(self) -> str:
        parts = [CUDA_PRELUDE if self.backend != "cpu" else C_PRELUDE]
        parts.extend(text for _, text in self.sources)
        return "\n".join(parts)


def _cublas_operand(rows, cols, s_row, s_col):
    """(op, leading dimension) for cuBLAS to read a rows x cols matrix whose element
    (i, j) is at i * s_row + j * s_col: op N if it is column-major (s_row = 1), op T
    if its transpose is (s_col = 1). The stride of a single row or column is arbitrary
    and cuBLAS wants a leading dimension of at least max(1, rows as stored)."""
    if s_row == 1 or rows == 1:
        ld = s_col if cols > 1 else max(1, rows)
        if ld >= max(1, rows):
            return 0, ld
    if s_col == 1 or cols == 1:
        ld = s_row if rows > 1 else max(1, cols)
        if ld >= max(1, cols):
            return 1, ld
    raise NotImplementedError(f"codegen: a GEMM operand with strides ({s_row}, {s_col}) "
                              "is neither column- nor row-major")


def _strides(shape):
    out, st = [], 1
    for d in reversed(shape):
        out.append(st)
        st *= d
    return list(reversed(out))


def _contiguous_block(slices, in_shape, out_shape):
    """Whether the slice of ``in_shape`` selecting ``out_shape`` is one contiguous run
    of memory: single indices on the leading axes, a unit-step range on one axis, whole
    axes after it."""
    d = 0
    while d < len(in_shape) and out_shape[d] == 1:
        d += 1
    if d < len(in_shape) and slices[d][2] != 1:
        return False
    return all(out_shape[e] == in_shape[e] and slices[e][2] == 1 and slices[e][0] == 0
               for e in range(d + 1, len(in_shape)))


def _unique(args):
    seen, out = set(), []
    for a in args:
        if a[1] not in seen:
            seen.add(a[1])
            out.append(a)
    return out


def _product(sizes):
    if not sizes:
        yield ()
        return
    for i in range(sizes[0]):
        for rest in _product(sizes[1:]):
            yield (i,) + rest


# Callbacks called with (backend, source) for every module emitted; the test suite
# registers one to compile every emitted CUDA module with nvcc.
module_listeners = []


def lower(graph, input_ids, output_ids, backend) -> Plan:
    low = Lowering(graph, input_ids, output_ids, backend)
    low.part.outputs_in_order = list(output_ids)
    plan = low.plan()
    plan.callbacks = low.callbacks
    for listener in module_listeners:
        listener(backend, plan.sources[backend])
    return plan
