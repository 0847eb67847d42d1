"""Fusion: partition a graph into the kernels that compute it.

- Elementwise nodes over one iteration space (their output shape) merge into groups
  that stay convex (no path leaves a group and comes back), greedily in topological
  order: a node joins the groups of all its same-space elementwise producers when the
  union stays convex. Operands of other shapes are broadcast loads.
- A reduction takes its elementwise producers of the reduced space as a prologue that
  it recomputes, so ``sum(exp(x - m))`` reads x and m and writes only the sum.
  A reduction whose prologue reads another reduction of the same space and axes joins
  that reduction's kernel as a later stage (softmax's max then sum: one kernel).
- Reshape aliases its argument's memory; a transpose of the last two axes that only
  matmuls read is a strided view for the GEMM. Every other op is a library kernel.
- Only values read by another kernel, or requested as outputs, are stored; an
  elementwise group with nothing to store disappears.
- With ``epilogues`` (the cpu backend), a convolution or product is paired with the
  elementwise kernel that reads its result and nothing computed after it (bias,
  inference BatchNorm and Scale, ReLU, a residual sum): lowering may run that kernel
  inside the GEMM's kernel on each piece of the output as it is computed.
- A group, and a reduction's prologue, is bounded (MAX_GROUP_DEPTH ops on its longest
  path, MAX_GROUP_SIZE ops): a long chain (thousands of in-place activations) becomes
  several fused kernels, so composing, cse and printing each stay cheap and shallow.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import networkx as nx

from symnet import ops


@dataclass
class Kernel:
    kind: str                       # "elementwise", "reduce", "library", "alias"
    members: list                   # node ids computed (topological order)
    stages: list = field(default_factory=list)      # reduce: the Reduce node ids
    prologue: dict = field(default_factory=dict)    # reduce: stage -> set of ew nodes
    stored: list = field(default_factory=list)      # node ids written to memory
    loads: list = field(default_factory=list)       # node ids read from memory
    needed: list = field(default_factory=list)      # elementwise: members computed
    boundaries: list = field(default_factory=list)  # (node, reason) where fusion stopped
    epilogue: "Kernel" = None       # library GEMM: the elementwise kernel it may apply
    fused: bool = False             # elementwise: applied inside a GEMM's kernel

    @property
    def anchor(self):
        return self.stages[-1] if self.stages else self.members[-1]


# Bounds of one elementwise group. A group's values are composed into one expression
# tree per stored value, which sympy (composition, cse, printing) walks recursively:
# its depth must stay bounded, or a long chain of elementwise layers (a deep net of
# in-place activations) costs time quadratic in its length and then exhausts Python's
# recursion limit. A longer chain becomes several kernels, each still fused, with the
# value between them stored. Depth counts the members on the longest path inside the
# group; common nets stay far below both bounds (ResNet-50, GoogLeNet, MobileNet v2:
# depth at most 6 and 11 members, forward and backward).
MAX_GROUP_DEPTH = 32
MAX_GROUP_SIZE = 256


def _is_ew(graph, n):
    return isinstance(graph.op(n), ops.Elementwise)


class Partition:
    def __init__(self, graph, output_ids, chain_reductions=True, epilogues=False):
        self.graph = graph
        self.outputs = list(dict.fromkeys(output_ids))
        self.order = graph.ancestors(self.outputs)
        self._args = {n: graph.args(n) for n in self.order}
        self.pos = {n: i for i, n in enumerate(self.order)}
        self.consts = {}
        for n in self.order:
            if self._const_expr(n) is not None:
                self.consts[n] = self._const_expr(n)
        # inputs of max/min reductions are compared with the result in their gradient
        # (x == max(x)): every kernel must read the very values the reduction saw, so
        # they are loaded, never recomputed in a prologue (a recomputation may round
        # differently: another association, a vector lane versus a scalar tail)
        self.exact = {self.args(n)[0] for n in self.order
                      if isinstance(graph.op(n), ops.Reduce) and graph.op(n).how != "sum"}
        self.prologues = {n: self._prologue(n) for n in self.order
                          if isinstance(graph.op(n), ops.Reduce)}
        # Kernel-level ancestry: a reduction depends on its prologue's loads, not on the
        # prologue nodes it recomputes, so a consumer of the reduction may still fuse
        # with those nodes (softmax: exp(x - m) / sum(exp(x - m)) is one kernel).
        self.anc = {}
        for n in self.order:
            if n in self.prologues and self.prologues[n]:
                srcs = self._loads_of(self.prologues[n])
            else:
                srcs = self.args(n)
            bits = 0
            for a in srcs:
                bits |= self.anc[a] | (1 << self.pos[a])
            self.anc[n] = bits
        self.consumers = {n: [c for c in graph.nx.successors(n) if c in self.pos]
                          for n in self.order}
        self.group_of = {}
        self.groups = {}
        self.chain_reductions = chain_reductions
        self._group_elementwise()
        self.kernels = self._build_kernels()
        self._break_cycles()
        self._select_stored()
        if epilogues:
            self._gemm_epilogues()

    def args(self, n):
        """graph.args(n), read once per node (networkx's edge views are slow)."""
        got = self._args.get(n)
        return got if got is not None else self.graph.args(n)

    # ------------------------------------------------------------ elementwise groups
    def _convex(self, members) -> bool:
        bits = 0
        for m in members:
            bits |= 1 << self.pos[m]
        for m in members:
            for a in self.args(m):
                if a not in members and self.anc[a] & bits:
                    return False
        return True

    def _joins_convex(self, gid, n):
        """Whether group gid (convex) plus n, which follows all of it in topological
        order, is convex: only a path from the group through another node into n can
        leave and come back, so only n's arguments outside the group are checked."""
        bits = self.gbits[gid]
        members = self.groups[gid]
        return not any(a not in members and self.anc[a] & bits for a in self.args(n))

    def _depths(self, members):
        """Per member, the members on the longest path inside ``members`` ending at it
        (constants, inlined, count for nothing)."""
        depth = {}
        for m in sorted(members, key=self.pos.get):
            if m in self.consts:
                depth[m] = 0
                continue
            depth[m] = 1 + max((depth[a] for a in self.args(m) if a in depth),
                               default=0)
        return depth

    def _fits(self, cands, n):
        """The depths of the group made of groups ``cands`` and node n, or None when it
        would exceed MAX_GROUP_SIZE or MAX_GROUP_DEPTH."""
        size = 1 + sum(len(self.groups[c]) for c in cands)
        if size > MAX_GROUP_SIZE:
            return None
        if len(cands) == 1:
            # joining one group: only n's own depth is new
            d = 0 if n in self.consts else 1 + max(
                (self.depth[a] for a in self.args(n)
                 if self.group_of.get(a) == cands[0]), default=0)
            return None if d > MAX_GROUP_DEPTH else {n: d}
        # merging groups may turn edges between them into paths inside the union
        depth = self._depths({n}.union(*(self.groups[c] for c in cands)))
        return None if max(depth.values()) > MAX_GROUP_DEPTH else depth

    def _group_elementwise(self):
        g = self.graph
        next_id = 0
        self.depth = {}
        self.gbits = {}         # group id -> bit set of its members' positions
        self.bounded = set()    # nodes refused by their producers' full groups
        for n in self.order:
            if not _is_ew(g, n):
                continue
            shape = g.shape(n)
            cands = []
            for a in self.args(n):
                if a in self.group_of and g.shape(a) == shape:
                    gid = self.group_of[a]
                    if gid not in cands:
                        cands.append(gid)
            chosen, depth, refused = None, None, False
            if len(cands) == 1:
                convex = self._joins_convex(cands[0], n)
            else:
                convex = bool(cands) and self._convex(
                    {n}.union(*(self.groups[c] for c in cands)))
            if convex:
                depth = self._fits(cands, n)
                chosen = cands if depth is not None else None
                refused = depth is None
            if chosen is None and len(cands) > 1:
                for c in cands:
                    if self._joins_convex(c, n):
                        depth = self._fits([c], n)
                        if depth is not None:
                            chosen = [c]
                            break
                        refused = True
            if refused:
                self.bounded.add(n)
            if chosen:
                keep = chosen[0]
                for c in chosen[1:]:
                    for m in self.groups.pop(c):
                        self.group_of[m] = keep
                        self.groups[keep].add(m)
                    self.gbits[keep] |= self.gbits.pop(c)
                self.groups[keep].add(n)
                self.group_of[n] = keep
                self.gbits[keep] |= 1 << self.pos[n]
                self.depth.update(depth)
            else:
                self.groups[next_id] = {n}
                self.gbits[next_id] = 1 << self.pos[n]
                self.group_of[n] = next_id
                self.depth[n] = 0 if n in self.consts else 1
                next_id += 1

    # ------------------------------------------------------------ kernels
    def _const_expr(self, n):
        """The expression of a constant node (elementwise without arguments, or a
        reshape of one), which kernels inline instead of loading; else None."""
        op = self.graph.op(n)
        if isinstance(op, ops.Elementwise) and op.n == 0:
            return op.expr
        if isinstance(op, (ops.Reshape, ops.StopGradient)):
            return self.consts.get(self.args(n)[0])
        return None

    def _prologue(self, r):
        """Elementwise nodes of the reduced space feeding reduction r (recomputed).

        Only sums take a prologue: the gradient of max/min compares the input with the
        result (x == max(x)), which needs the very values the reduction saw; values
        recomputed in another kernel may round differently (another association or
        contraction), so a max/min reads its input from memory.
        """
        g = self.graph
        if g.op(r).how != "sum":
            return set()
        (x,) = self.args(r)
        space = g.shape(x)
        # walk back from x, consumers before their arguments (descending position), so
        # a node's depth (the longest path from it to x inside the prologue) is known
        # when it is reached; the prologue is bounded like an elementwise group, the
        # rest of a longer chain is loaded
        members, depth, heap = set(), {x: 1}, [(-self.pos[x], x)]
        while heap:
            _, n = heapq.heappop(heap)
            if n in members or not _is_ew(g, n) or g.shape(n) != space or n in self.exact:
                continue
            d = depth[n]
            if d > MAX_GROUP_DEPTH or len(members) >= MAX_GROUP_SIZE:
                continue
            members.add(n)
            for a in self.args(n):
                if a not in depth:
                    heapq.heappush(heap, (-self.pos[a], a))
                depth[a] = max(depth.get(a, 0), d + (a not in self.consts))
        return members

    def _loads_of(self, members, exclude=()):
        loads = []
        for m in sorted(members, key=self.pos.get):
            for a in self.args(m):
                if a not in members and a not in exclude and a not in loads and \
                        a not in self.consts:
                    loads.append(a)
        return loads

    def _build_kernels(self):
        g = self.graph
        kernels, reduce_kernel = [], {}
        for gid, members in self.groups.items():
            kernels.append(Kernel("elementwise", sorted(members, key=self.pos.get)))
        for n in self.order:
            op = g.op(n)
            if isinstance(op, ops.Reduce):
                pro = self.prologues[n]
                loads = self._loads_of(pro) if pro else list(self.args(n))
                target = self._chain_target(n, loads, reduce_kernel) \
                    if self.chain_reductions else None
                if target is not None:
                    target.stages.append(n)
                    target.members.append(n)
                    target.prologue[n] = pro
                    reduce_kernel[n] = target
                else:
                    k = Kernel("reduce", [n], stages=[n], prologue={n: pro})
                    kernels.append(k)
                    reduce_kernel[n] = k
            elif isinstance(op, (ops.Reshape, ops.StopGradient)):
                kernels.append(Kernel("alias", [n], loads=list(self.args(n))))
            elif self._is_matmul_view(n):
                kernels.append(Kernel("view", [n], loads=list(self.args(n))))
            elif not isinstance(op, (ops.Elementwise, ops.Leaf)):
                kernels.append(Kernel("library", [n], loads=list(self.args(n))))
        for k in kernels:
            if k.kind == "reduce":
                k.loads = self._reduce_loads(k)
        return kernels

    def _is_matmul_view(self, n):
        """A transpose of the last two axes read only by matmuls: GEMM reads it through
        strides, nothing is copied."""
        op = self.graph.op(n)
        if not isinstance(op, ops.Transpose) or len(op.perm) < 2:
            return False
        ident = tuple(range(len(op.perm) - 2))
        if op.perm != ident + (len(op.perm) - 1, len(op.perm) - 2):
            return False
        cons = self.consumers.get(n, [])
        return bool(cons) and n not in self.outputs and all(
            isinstance(self.graph.op(c), ops.MatMul) for c in cons)

    def _reduce_loads(self, k):
        loads = []
        for s in k.stages:
            pro = k.prologue[s]
            src = self._loads_of(pro) if pro else list(self.args(s))
            for a in src:
                if a not in k.stages and a not in loads:
                    loads.append(a)
        return loads

    def _chain_target(self, r, loads, reduce_kernel):
        g = self.graph
        op = g.op(r)
        space = g.shape(self.args(r)[0])
        for l in loads:
            k = reduce_kernel.get(l)
            if k is None:
                continue
            first = g.op(k.stages[0])
            if first.axes != op.axes or g.shape(self.args(k.stages[0])[0]) != space:
                continue
            stage_bits = 0
            for s in k.stages:
                stage_bits |= 1 << self.pos[s]
            if all(o in k.stages or not (self._kernel_anc(o, reduce_kernel) & stage_bits)
                   for o in loads):
                return k
        return None

    def _kernel_anc(self, n, reduce_kernel):
        """Ancestry of n at kernel level: a stage of a chained reduction kernel depends
        on everything any stage of that kernel depends on."""
        k = reduce_kernel.get(n)
        if k is None:
            return self.anc[n]
        bits = 0
        for s in k.stages:
            bits |= self.anc[s] | (1 << self.pos[s])
        return bits

    # ------------------------------------------------------------ stored values
    def _kernel_dag(self):
        producer = {}
        for i, k in enumerate(self.kernels):
            for m in k.members:
                producer.setdefault(m, i)
        for i, k in enumerate(self.kernels):
            if k.kind == "reduce":
                for s in k.stages:
                    producer[s] = i
        return producer

    def _kernel_graph(self):
        """The DAG of kernels (edges producer -> consumer) and, per edge into an
        elementwise kernel, the members that read the producer."""
        g = self.graph
        producer = self._kernel_dag()
        dag = nx.DiGraph()
        dag.add_nodes_from(range(len(self.kernels)))
        readers = {}
        for i, k in enumerate(self.kernels):
            if k.kind == "elementwise":
                members = set(k.members)
                pairs = [(m, a) for m in k.members for a in self.args(m)
                         if a not in members and a not in self.consts]
            else:
                pairs = [(None, a) for a in k.loads]
            for m, a in pairs:
                p = producer.get(a)
                if p is not None and p != i:
                    dag.add_edge(p, i)
                    readers.setdefault((p, i), []).append(m)
        return dag, readers

    def _break_cycles(self):
        """Convex groups can still depend on each other both ways (A reads B's early
        member, B reads A's early member). Split a group on such a cycle into the
        members that do not read the other kernel and those that do, until the kernel
        graph is acyclic."""
        for _ in range(len(self.order) + 1):
            dag, readers = self._kernel_graph()
            # find_cycle on an acyclic graph walks every edge from every node (quadratic
            # in the kernels); the topological check is linear
            if nx.is_directed_acyclic_graph(dag):
                return
            try:
                cycle = nx.find_cycle(dag)
            except nx.NetworkXNoCycle:
                return
            for p, i in cycle:
                k = self.kernels[i]
                if k.kind == "elementwise" and self._split_group(k, readers[(p, i)]):
                    break
            else:
                raise nx.NetworkXUnfeasible(f"kernel cycle {cycle} cannot be split")
            self.kernels = self._build_kernels()

    def _split_group(self, k, readers):
        gid = self.group_of[k.members[0]]
        members = self.groups[gid]
        late = set(m for m in readers if m is not None)
        for m in sorted(members, key=self.pos.get):
            if any(a in late for a in self.args(m)):
                late.add(m)
        early = members - late
        if not early or not late:
            return False
        new = max(self.groups) + 1
        self.groups[gid] = early
        self.groups[new] = late
        for m in late:
            self.group_of[m] = new
        return True

    def _select_stored(self):
        dag, _ = self._kernel_graph()
        order = list(nx.lexicographical_topological_sort(
            dag, key=lambda i: self.pos[self.kernels[i].anchor]))
        stored = set(self.outputs)
        emitted = []
        for i in reversed(order):
            k = self.kernels[i]
            if k.kind == "elementwise":
                want = [m for m in k.members if m in stored]
                if not want:
                    continue
                need = self._needed(k, want)
                k.stored, k.needed = want, need
                k.loads = self._loads_of(set(need))
            elif k.kind == "reduce":
                k.stored = [s for s in k.stages if s in stored]
                if not k.stored:
                    continue
            else:
                if not any(m in stored for m in k.members):
                    continue
                k.stored = list(k.members)
            stored.update(k.loads)
            emitted.append(k)
        self.kernels = list(reversed(emitted))
        self.stored = stored
        self._explain()

    # ------------------------------------------------------------ GEMM epilogues
    def _gemm_epilogues(self):
        """Pair each convolution or product (a library kernel) with the elementwise
        kernel that reads its result over the same space and whose other operands
        are ready before it (per-channel vectors: a bias, BatchNorm's and Scale's
        coefficients; a residual computed earlier): lowering may apply that kernel to
        each piece of the GEMM's output while it is in cache instead of as a pass of
        its own. The kernels the epilogue needs that come between the two and do not
        depend on the GEMM (the coefficients' tiny kernels) move before it, and the
        epilogue right after it, so either way the order stays topological."""
        g = self.graph
        producer = {}
        for k in self.kernels:
            for s in k.stored or k.members:
                producer.setdefault(s, id(k))
        # per kernel (by identity): the kernels it reads (aliases resolved); positions
        # are kept in ``place`` and updated only where a pairing reorders, so pairing
        # stays linear in the number of kernels
        deps = {}
        for k in self.kernels:
            deps[id(k)] = {p for p in (producer.get(a) for a in k.loads)
                           if p is not None and p != id(k)}
        place = {id(k): i for i, k in enumerate(self.kernels)}
        li, taken = 0, set()
        while li < len(self.kernels):
            lib = self.kernels[li]
            li += 1
            if lib.kind != "library" or len(lib.members) != 1 or lib.epilogue is not None \
                    or not isinstance(g.op(lib.members[0]), (ops.Conv2d, ops.MatMul)):
                continue
            n = lib.members[0]
            at = li - 1
            for ei in range(at + 1, len(self.kernels)):
                e = self.kernels[ei]
                if e.kind != "elementwise" or n not in e.loads:
                    continue
                if g.shape(e.stored[0]) != g.shape(n) or id(e) in taken:
                    break
                # the kernels between the two that the epilogue needs, transitively
                need, stack = set(), [id(e)]
                while stack:
                    for p in deps[stack.pop()]:
                        if at < place[p] < ei and p not in need:
                            need.add(p)
                            stack.append(p)
                if self._reaches(deps, place, id(lib), need) or any(
                        self.kernels[place[p]].epilogue is not None or p in taken
                        for p in need):
                    break
                moved = sorted(place[p] for p in need)
                rest = [i for i in range(at + 1, ei) if id(self.kernels[i]) not in need]
                new = moved + [at, ei] + rest
                self.kernels[at:ei + 1] = [self.kernels[i] for i in new]
                for i in range(at, ei + 1):
                    place[id(self.kernels[i])] = i
                lib.epilogue = e
                taken.add(id(e))
                li = at         # the kernels moved before it are looked at next
                break

    @staticmethod
    def _reaches(deps, place, at, need):
        """Whether any kernel in ``need`` depends on kernel ``at``, through any path
        (kernels by identity, ``place`` their positions)."""
        seen, stack, lo = set(), list(need), place[at]
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            if p == at or at in deps[p]:
                return True
            stack.extend(q for q in deps[p] if place[q] > lo)
        return False

    def _needed(self, k, want):
        members = set(k.members)
        need, stack = set(), list(want)
        while stack:
            n = stack.pop()
            if n in need:
                continue
            need.add(n)
            stack.extend(a for a in self.args(n) if a in members)
        return sorted(need, key=self.pos.get)

    def _explain(self):
        """Record, for each kernel, why fusion stopped at each stored value."""
        g = self.graph
        for k in self.kernels:
            for s in k.stored:
                reasons = []
                if s in self.outputs:
                    reasons.append("requested as an output")
                for c in self.consumers.get(s, []):
                    cop = g.op(c)
                    if c in k.members:
                        continue
                    if isinstance(cop, ops.Elementwise):
                        if k.kind == "reduce":
                            reasons.append(f"consumer {cop.label} #{c} reads a reduction's "
                                           "result (reductions take no epilogue)")
                        elif g.shape(c) != g.shape(s):
                            reasons.append(f"consumer {cop.label} #{c} iterates {g.shape(c)}, "
                                           f"not {g.shape(s)}")
                        elif self.group_of.get(c) != self.group_of.get(s) and \
                                c in self.bounded:
                            reasons.append(f"the kernel reached its bound (depth "
                                           f"{MAX_GROUP_DEPTH}, {MAX_GROUP_SIZE} ops): "
                                           f"consumer {cop.label} #{c} starts another")
                        elif self.group_of.get(c) != self.group_of.get(s):
                            reasons.append(f"fusing consumer {cop.label} #{c} would make a "
                                           "cycle through another kernel")
                    elif isinstance(cop, ops.Reduce):
                        if k.kind == "reduce":
                            reasons.append(f"consumer reduction #{c} reduces other axes")
                    elif isinstance(cop, ops.Reshape):
                        reasons.append(f"reshape #{c} aliases it")
                    else:
                        reasons.append(f"consumer {cop.kind} #{c} is a library kernel")
                k.boundaries.append((s, "; ".join(dict.fromkeys(reasons)) or "read later"))


def partition(graph, output_ids, epilogues=False) -> Partition:
    """``epilogues``: pair GEMMs with the elementwise kernels they may apply
    (Partition._gemm_epilogues; the cpu backend)."""
    try:
        return Partition(graph, output_ids, epilogues=epilogues)
    except nx.NetworkXUnfeasible:
        # a chain of reductions closed a cycle between kernels the checks above did
        # not foresee: partition again with every reduction in a kernel of its own
        return Partition(graph, output_ids, chain_reductions=False, epilogues=epilogues)
