"""The ``symnet`` command: Caffe's command-line tools on symnet.

    symnet train --solver S [--weights W | --snapshot S] [--log FILE]
                 [--sigint_effect stop|snapshot|none] [--sighup_effect ...]
    symnet test --model M --weights W --iterations N
    symnet time --model M --iterations N
    symnet compile --model M --emit DIR
    symnet draw --model M out.svg|png|dot [--color-by-kernel]
    symnet upgrade OLD NEW
    symnet run SCRIPT [ARGS...]      (a pycaffe script; ``import caffe`` gives symnet.caffe)
    symnet device
    symnet plot-log LOG out.png
    symnet convert-imageset LIST ROOT DB
    symnet compute-image-mean DB mean.binaryproto
    symnet include-dir

Commands that build a net take ``--backend`` (numpy, cpu, cuda-emu, cuda; default
``$SYMNET_BACKEND`` or the machine's best) and ``--layers MODULE`` (import a module of
symbolic layers first, from the current directory or PYTHONPATH; repeatable); they
also take ``--phase`` and ``--input-shape BLOB=N,C,H,W`` (repeatable) to stand in
data layers. ``--help`` of a command lists the options it takes.

``train --log FILE`` writes one JSON object per line: ``{"event": "start", ...}``, then
``"train"`` (iter, loss = the smoothed loss, outputs), ``"lr"`` (iter, lr), ``"test"``
(iter, net, outputs [{name, value, loss_weight}], loss when test_compute_loss),
``"snapshot"`` (iter, model, state) and ``"done"`` or ``"stopped"``. ``plot-log`` reads
it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np

import symnet as sn

from .data import external
from .errors import SymnetError
from .formats.upgrade import upgrade_file
from .function import default_backend
from .net import TEST, TRAIN, Net
from .runtime import memory
from .solver import SignalHandler, get_solver, net_loss, output_scores

_BACKENDS = ("numpy", "cpu", "cuda-emu", "cuda")


class CommandError(SymnetError):
    """A command cannot run (the message says why and what to do)."""


# ----------------------------------------------------------------------------- helpers

def _input_shapes(items):
    shapes = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        if not sep or not name:
            raise CommandError(f"--input-shape '{item}': expected BLOB=D1,D2,...")
        try:
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(",") if d)
        except ValueError:
            raise CommandError(f"--input-shape '{item}': dimensions must be integers") \
                from None
    return shapes or None


def _import_layers(modules):
    """Import the --layers modules; the current directory is searched first, as
    ``python -m`` would (a console script's sys.path does not hold it)."""
    if modules:
        cwd = os.getcwd()
        if "" not in sys.path and cwd not in sys.path:
            sys.path.insert(0, cwd)
    for mod in modules or []:
        try:
            __import__(mod)
        except ImportError as e:
            raise CommandError(f"--layers {mod}: cannot import it ({e}); is it in the "
                               "current directory or on PYTHONPATH?") from None


def _phase(name):
    return {"TRAIN": TRAIN, "TEST": TEST}[name.upper()]


def _make_net(args, phase=None, weights=None):
    return Net(args.model, phase=_phase(phase or args.phase), weights=weights,
               backend=args.backend, layer_modules=tuple(args.layers or ()),
               input_shapes=_input_shapes(getattr(args, "input_shape", None)))


def _out(*a):
    print(*a, flush=True)


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:   # noqa: BLE001 - logging must not break training
            self.handleError(record)


def _setup_logging(verbose=True):
    logger = logging.getLogger("symnet")
    for h in list(logger.handlers):
        if getattr(h, "_symnet_cli", False):
            logger.removeHandler(h)
    handler = _TqdmHandler()
    handler._symnet_cli = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    return handler


# ----------------------------------------------------------------------------- graphs

def build_functions(net):
    """The net's whole forward and backward Functions (compiled for the net's backend;
    a ``numpy`` net builds the graphs without compiling), without running them: the
    very graphs forward() and backward() run. Graph nodes carry the name of the layer
    that made them, so each plan step lists its layers."""
    return net.functions()


# ----------------------------------------------------------------------------- train

def cmd_train(args):
    from tqdm import tqdm
    if args.weights and args.snapshot:
        raise CommandError("give either --weights or --snapshot, not both")
    _import_layers(args.layers)
    from . import parallel
    root = parallel.world().is_root     # under mpiexec/srun: only rank 0 logs
    _setup_logging(not args.quiet and root)
    solver = get_solver(args.solver, backend=args.backend,
                        layer_modules=tuple(args.layers or ()),
                        input_shapes=_input_shapes(args.input_shape))
    if args.weights:
        solver.copy_weights(args.weights)
    logf = open(args.log, "a", encoding="utf-8") if args.log and root else None
    bar = None
    if not args.no_progress and root:
        bar = tqdm(total=solver.param.max_iter, initial=solver.iter, unit="it",
                   dynamic_ncols=True, file=sys.stderr, leave=True, disable=None)

    def listen(event):
        if logf is not None and event["event"] != "iteration":
            logf.write(json.dumps(event) + "\n")
            logf.flush()
        if bar is not None and event["event"] == "iteration":
            if bar.n != event["iter"] - 1:
                bar.n = event["iter"] - 1
            bar.update(1)
            bar.set_postfix(loss=f"{event['loss']:.4g}", lr=f"{event['lr']:.3g}",
                            refresh=False)
    solver.listeners.append(listen)
    if logf is not None:
        logf.write(json.dumps({"event": "start", "solver": os.path.abspath(args.solver),
                               "type": solver.type, "backend": solver.net.backend,
                               "max_iter": solver.param.max_iter, "time": time.time()})
                   + "\n")
    try:
        with SignalHandler(args.sigint_effect, args.sighup_effect) as handler:
            solver.action_function = handler.requested_action
            solver.solve(resume_file=args.snapshot)
    finally:
        if bar is not None:
            bar.close()
        if logf is not None:
            logf.close()
        solver.close()
    return 0


# ----------------------------------------------------------------------------- test

def cmd_test(args):
    _import_layers(args.layers)
    net = _make_net(args, weights=args.weights)
    scores, names, loss = None, None, 0.0
    for i in range(args.iterations):
        net.forward()
        loss += net_loss(net)
        vals = output_scores(net)
        if scores is None:
            scores, names = [v["value"] for v in vals], vals
        else:
            for k, v in enumerate(vals):
                scores[k] += v["value"]
        for v in vals:
            _out(f"Batch {i}, {v['name']} = {v['value']:.6g}")
    net.close()
    n = max(args.iterations, 1)
    _out(f"Loss: {loss / n:.6g}")
    for k, v in enumerate(names or []):
        mean = scores[k] / n
        note = f" (* {v['loss_weight']:g} = {v['loss_weight'] * mean:.6g} loss)" \
            if v["loss_weight"] else ""
        _out(f"{v['name']} = {mean:.6g}{note}")
    return 0


# ----------------------------------------------------------------------------- time

def cmd_time(args):
    _import_layers(args.layers)
    net = _make_net(args)
    if net.backend == "numpy":
        raise CommandError("time needs a compiled backend (cpu, cuda-emu or cuda), not numpy")
    n = max(args.iterations, 1)
    _out(f"Network '{net.name}' on backend {net.backend}: timing {n} iterations")
    report = net.time(n)                      # per step, with the layers of each step
    backward = any(s["phase"] == "backward" for s in report["steps"])
    t_fwd = t_bwd = 0.0
    memory.reset_transfer_counts()
    for _ in range(n):                        # wall clock, untimed steps
        t0 = time.perf_counter()
        net.forward()
        t1 = time.perf_counter()
        if backward:
            net.backward()
        t2 = time.perf_counter()
        t_fwd += t1 - t0
        t_bwd += t2 - t1
    _out("Average time per layer (a fused kernel's time is split equally between the "
         "layers whose ops it computes):")
    width = max([len(k) for k in report["layers"]] + [5])
    for name, t in report["layers"].items():
        _out(f"{name:>{width}}   forward: {t['forward']:.4f} ms.")
        _out(f"{name:>{width}}  backward: {t['backward']:.4f} ms.")
    _out(f"Average Forward pass: {1000 * t_fwd / n:.4f} ms.")
    _out(f"Average Backward pass: {1000 * t_bwd / n:.4f} ms.")
    _out(f"Average Forward-Backward: {1000 * (t_fwd + t_bwd) / n:.4f} ms.")
    if not memory.get_device(net.backend).is_host:
        c = memory.transfer_counts()
        _out(f"Transfers per iteration: host to device {c['h2d_bytes'] / n:,.0f} bytes in "
             f"{c['h2d_calls'] / n:g} copies, device to host {c['d2h_bytes'] / n:,.0f} bytes "
             f"in {c['d2h_calls'] / n:g} copies.")
    _out("")
    _out("Per kernel (plan steps in order):")
    _out(f"{'pass':<9} {'#':>3} {'kind':<8} {'kernel':<36} {'ms':>9}  layers")
    idx = {"forward": 0, "backward": 0}
    for s in report["steps"]:
        _out(f"{s['phase']:<9} {idx[s['phase']]:>3} {s['kind']:<8} {s['name'][:36]:<36} "
             f"{s['ms']:>9.4f}  {', '.join(s['layers']) or '-'}")
        idx[s["phase"]] += 1
    net.close()
    return 0


# ----------------------------------------------------------------------------- compile

def _lowered(net):
    """{"forward"/"backward": (fn, {backend: plan})} for the cpu and cuda backends."""
    from .codegen.lower import lower
    fwd, bwd = build_functions(net)
    out = {}
    for kind, fn in (("forward", fwd), ("backward", bwd)):
        if fn is None:
            continue
        ins = [t.id for t in fn.inputs]
        outs = [t.id for t in fn.outputs]
        out[kind] = (fn, {be: lower(fn.graph, ins, outs, be) for be in ("cpu", "cuda")})
    return out


def cmd_compile(args):
    _import_layers(args.layers)
    args.backend = "numpy"          # graphs only; lowering below is for cpu and cuda
    net = _make_net(args)
    lowered = _lowered(net)
    os.makedirs(args.emit, exist_ok=True)
    plans, written = {}, []
    for kind, (fn, by_backend) in lowered.items():
        plans[kind] = {}
        for be, plan in by_backend.items():
            ext = "c" if be == "cpu" else "cu"
            path = os.path.join(args.emit, f"{kind}.{ext}")
            with open(path, "w", encoding="utf-8") as f:
                f.write(plan.sources[be])
            written.append(path)
            plans[kind][be] = json.loads(plan.to_json())
            plans[kind][be]["function"] = {
                "inputs": [t.name for t in fn.inputs],
                "outputs": [t.name or f"#{t.id}" for t in fn.outputs]}
    path = os.path.join(args.emit, "plan.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"net": net.name, "phase": args.phase.upper(), "plans": plans}, f,
                  indent=1, sort_keys=True)
    written.append(path)
    for p in written:
        _out(p)
    net.close()
    return 0


# ----------------------------------------------------------------------------- draw

_PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69",
            "#fccde5", "#bc80bd", "#ccebc5", "#ffed6f", "#1f78b4", "#33a02c", "#e31a1c"]


def kernel_groups(net):
    """{layer: (colour index, [kernel names])}: layers sharing a fused forward kernel
    share a colour."""
    lowered = _lowered(net)
    if "forward" not in lowered:
        return {}
    plan = lowered["forward"][1]["cpu"]
    parent = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a
    kernels = {}
    for step in plan.steps:
        names = list(step.attrs.get("layers", []))
        for l in names:
            kernels.setdefault(l, []).append(step.name)
            find(l)
        for a, b in zip(names, names[1:]):
            parent[find(a)] = find(b)
    groups = {}
    out = {}
    for l in kernels:
        root = find(l)
        groups.setdefault(root, len(groups))
        out[l] = (groups[root], list(dict.fromkeys(kernels[l])))
    return out


def _kernel_coloured_source(net, rankdir):
    """DOT text of a built net whose layers sharing a fused forward kernel share a
    colour (the node lists the kernels)."""
    from .caffe.draw import BLOB_STYLE, _attrs, _q
    colours = kernel_groups(net)
    lines = [f"digraph {_q(net.name or 'net')} {{", f"  rankdir={_q(rankdir)};"]
    blobs = set()
    for k, layer in enumerate(net._layers):
        label = f"{layer.name}\n({layer.type})"
        attrs = {"shape": "box", "style": "filled", "fillcolor": "#dddddd"}
        if layer.name in colours:
            group, kernels = colours[layer.name]
            attrs["fillcolor"] = _PALETTE[group % len(_PALETTE)]
            label += "\n" + "\n".join(kernels[:3]) + ("\n..." if len(kernels) > 3 else "")
        lines.append(f"  {_q(f'l{k}')} {_attrs(dict(label=label, **attrs))};")
        for b in list(layer.bottoms) + list(layer.tops):
            if b not in blobs:
                blobs.add(b)
                lines.append(f"  {_q(b + '_blob')} {_attrs(dict(label=b, **BLOB_STYLE))};")
        lines += [f"  {_q(b + '_blob')} -> {_q(f'l{k}')};" for b in layer.bottoms]
        lines += [f"  {_q(f'l{k}')} -> {_q(t + '_blob')};" for t in layer.tops]
    lines.append("}")
    return "\n".join(lines) + "\n"


def cmd_draw(args):
    """Draw from the prototxt alone (no layer is built, no Python layer imported);
    --color-by-kernel builds the net to find its fused kernels."""
    from .caffe import draw
    fmt = os.path.splitext(args.output)[1].lower().lstrip(".")
    if fmt not in ("svg", "png", "pdf") + draw.TEXT_FORMATS:
        raise CommandError(f"draw: output '{args.output}' must end in .svg, .png, .pdf or "
                           ".dot")
    if args.color_by_kernel:
        _import_layers(args.layers)
        args.backend = "numpy"
        net = _make_net(args)
        try:
            source = _kernel_coloured_source(net, args.rankdir)
        finally:
            net.close()
    else:
        if not os.path.isfile(args.model):
            raise FileNotFoundError(f"draw: no prototxt file '{args.model}'")
        source = draw.get_dot_source(args.model, args.rankdir, phase=_phase(args.phase))
    if fmt in draw.TEXT_FORMATS:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(source)
    elif shutil.which("dot") is None:
        dot_file = os.path.splitext(args.output)[0] + ".dot"
        with open(dot_file, "w", encoding="utf-8") as f:
            f.write(source)
        print(f"symnet draw: Graphviz's 'dot' program is not installed, so {args.output} "
              f"was not rendered; wrote the graph to {dot_file}. Render it with\n"
              f"    dot -T{fmt} {dot_file} -o {args.output}\n"
              f"after you {draw.INSTALL_DOT}.", file=sys.stderr)
        return 0
    else:
        data = draw.render(source, fmt)
        with open(args.output, "wb") as f:
            f.write(data)
    _out(f"Drawing net to {args.output}")
    return 0


# ----------------------------------------------------------------------------- misc

def cmd_run(args):
    """Run a pycaffe script with ``import caffe`` giving symnet.caffe."""
    import traceback

    from .caffe.alias import run_script
    if not os.path.isfile(args.script):
        raise CommandError(f"no script '{args.script}'")
    try:
        run_script(args.script, args.args, force=args.force_alias)
    except Exception:      # noqa: BLE001 - the script's own error, with its traceback
        traceback.print_exc()
        return 1
    return 0


def cmd_upgrade(args):
    notes = upgrade_file(args.old, args.new)
    for note in notes:
        _out(f"upgraded: {note}")
    _out(f"Wrote upgraded file to {args.new}" if notes else
         f"{args.old} needs no upgrade; copied to {args.new}")
    return 0


def _check_backend(name):
    try:
        with sn.graph_scope():
            x = sn.input("x", (4,))
            f = sn.function([x], sn.exp(x) * 2.0, backend=name)
            r = f(np.zeros(4, np.float32))
        return bool(np.allclose(r, 2.0)), ""
    except Exception as e:   # noqa: BLE001 - reported, not raised
        return False, str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def _version(cmd, line=0):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[line] if text else ""
    except Exception:   # noqa: BLE001
        return ""


def cmd_device(args):
    from .runtime import cpu, cuda_emu, devices
    cc, cxx = shutil.which(cpu.CC), shutil.which(cuda_emu.CXX)
    nvcc = shutil.which("nvcc")
    ok_cpu, why_cpu = _check_backend("cpu") if cc else (False, f"no C compiler '{cpu.CC}'")
    ok_emu, why_emu = _check_backend("cuda-emu") if cxx else \
        (False, f"no C++ compiler '{cuda_emu.CXX}'")
    usable = devices.cuda_usable()
    rows = [
        ("numpy", True, "NumPy reference"),
        ("cpu", ok_cpu, f"{cc} ({_version([cc, '--version'])})"
         if ok_cpu else why_cpu),
        ("cuda-emu", ok_emu, cxx if ok_emu else why_emu),
        ("cuda", usable, "pycuda and a CUDA device" if usable else
         "no usable CUDA device (needs pycuda, an NVIDIA GPU and its driver)"),
    ]
    for name, ok, note in rows:
        _out(f"{name:<9} {'yes' if ok else 'no ':<4} {note}")
    _out(f"{'nvcc':<9} {'yes' if nvcc else 'no ':<4} "
         f"{(nvcc + ' (' + _version([nvcc, '--version'], -1) + ')') if nvcc else 'not on PATH'}")
    _out(f"default backend: {default_backend()}")
    return 0


def read_log(path):
    events = []
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                raise CommandError(f"{path}:{k}: not a JSON line; plot-log reads the log "
                                   "written by symnet train --log") from None
    return events


def cmd_plot_log(args):
    events = read_log(args.log)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CommandError("plot-log needs matplotlib: pip install 'symnet[tools]'") \
            from None
    train = [e for e in events if e.get("event") == "train"]
    tests = [e for e in events if e.get("event") == "test"]
    if not train and not tests:
        raise CommandError(f"{args.log}: no train or test records to plot")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if train:
        ax.plot([e["iter"] for e in train], [e["loss"] for e in train], label="train loss")
    series = {}
    for e in tests:
        for o in e.get("outputs", []):
            series.setdefault((e.get("net", 0), o["name"]), []).append((e["iter"], o["value"]))
        if "loss" in e:
            series.setdefault((e.get("net", 0), "test loss"), []).append((e["iter"], e["loss"]))
    for (netid, name), pts in series.items():
        target = ax if "loss" in name else axes[1]
        target.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"test #{netid} {name}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("test score")
    if axes[1].lines:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(args.output)
    _out(f"Wrote {args.output}")
    return 0


def cmd_convert_imageset(args):
    from tqdm import tqdm

    from .data import tools
    bar = tqdm(unit="img", file=sys.stderr, disable=args.quiet)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)
    try:
        n = tools.convert_imageset(args.list, args.root, args.db,
                                   resize_height=args.resize_height,
                                   resize_width=args.resize_width, shuffle=args.shuffle,
                                   gray=args.gray, encoded=args.encoded,
                                   encode_type=args.encode_type, seed=args.seed,
                                   progress=progress)
    finally:
        bar.close()
    _out(f"Processed {n} files into {args.db}")
    return 0


def cmd_compute_image_mean(args):
    from .data import tools
    mean = tools.compute_image_mean(args.db, args.output)
    m = np.asarray(mean)
    _out(f"Wrote mean of shape {list(m.shape)} to {args.output}")
    if m.ndim >= 3:
        for c, v in enumerate(m.reshape(m.shape[-3], -1).mean(1)):
            _out(f"mean_value channel [{c}]: {float(v):.6g}")
    return 0


def cmd_include_dir(args):
    _out(external.include_dir())
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser():
    parser = argparse.ArgumentParser(prog="symnet", description=(
        "Caffe's command-line tools on symnet: train, test, time, compile, draw, ..."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name, fn, help_, model=False, backend=True, layers=True):
        """A subcommand with only the options it uses."""
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        if backend:
            p.add_argument("--backend", choices=_BACKENDS, default=None,
                           help="numpy, cpu, cuda-emu or cuda (default: $SYMNET_BACKEND or "
                           "the machine's best)")
        if layers:
            p.add_argument("--layers", action="append", metavar="MODULE",
                           help="import a module of symbolic layers first, searched in the "
                           "current directory and on PYTHONPATH (repeatable)")
        if model:
            p.add_argument("--model", required=True, help="the net prototxt")
            p.add_argument("--input-shape", action="append", metavar="BLOB=N,C,H,W",
                           help="stand in the data layer making BLOB (repeatable)")
        return p

    p = command("train", cmd_train, "train a net from a solver prototxt")
    p.add_argument("--solver", required=True)
    p.add_argument("--weights", help="initial weights (.caffemodel, or comma-separated)")
    p.add_argument("--snapshot", help="resume from a .solverstate")
    p.add_argument("--sigint_effect", "--sigint-effect", default="stop",
                   choices=("stop", "snapshot", "none"))
    p.add_argument("--sighup_effect", "--sighup-effect", default="snapshot",
                   choices=("stop", "snapshot", "none"))
    p.add_argument("--log", help="write a JSON-lines log (read by plot-log)")
    p.add_argument("--input-shape", action="append", metavar="BLOB=N,C,H,W",
                   help="stand in the data layer making BLOB (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="no log lines")

    p = command("test", cmd_test, "score a trained net", model=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--phase", default="TEST", choices=("TRAIN", "TEST", "train", "test"))

    p = command("time", cmd_time, "time forward and backward per layer and per kernel",
                model=True)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST", "train", "test"))

    p = command("compile", cmd_compile, "write the generated C and CUDA modules and the "
                "plans of a net's forward and backward passes", model=True, backend=False)
    p.add_argument("--emit", required=True, metavar="DIR")
    p.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST", "train", "test"))

    p = command("draw", cmd_draw, "draw a net's layers and blobs (graphviz); reads the "
                "prototxt only, unless --color-by-kernel", model=True, backend=False)
    p.add_argument("output", help="out.svg, out.png, out.pdf or out.dot")
    p.add_argument("--color-by-kernel", action="store_true",
                   help="colour layers that share a fused forward kernel alike")
    p.add_argument("--rankdir", default="LR", choices=("LR", "TB", "BT", "RL"))
    p.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST", "train", "test"))

    p = command("upgrade", cmd_upgrade, "upgrade a net, solver or .caffemodel file",
                backend=False, layers=False)
    p.add_argument("old")
    p.add_argument("new")

    command("device", cmd_device, "which backends work on this machine", backend=False,
            layers=False)

    p = command("run", cmd_run, "run a pycaffe script with 'import caffe' giving "
                "symnet.caffe", backend=False, layers=False)
    p.add_argument("--force-alias", action="store_true",
                   help="use symnet.caffe even where a built pycaffe is importable")
    p.add_argument("script", help="the Python script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")

    p = command("plot-log", cmd_plot_log, "plot loss and test scores of a train --log file",
                backend=False, layers=False)
    p.add_argument("log")
    p.add_argument("output")

    p = command("convert-imageset", cmd_convert_imageset,
                "write the images of a list file into an LMDB of Datum (as Caffe's tool)",
                backend=False, layers=False)
    p.add_argument("list", metavar="LIST", help="a file of 'path label' lines")
    p.add_argument("root", metavar="ROOT", help="the folder the paths are relative to")
    p.add_argument("db", metavar="DB", help="the LMDB to create")
    p.add_argument("--resize_height", "--resize-height", type=int, default=0)
    p.add_argument("--resize_width", "--resize-width", type=int, default=0)
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--gray", action="store_true")
    p.add_argument("--encoded", action="store_true")
    p.add_argument("--encode_type", "--encode-type", default="")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed")
    p.add_argument("--quiet", action="store_true")

    p = command("compute-image-mean", cmd_compute_image_mean,
                "the mean image of an LMDB as a .binaryproto", backend=False, layers=False)
    p.add_argument("db")
    p.add_argument("output")

    command("include-dir", cmd_include_dir,
            "print the folder holding symnet_data.h (for C data sources)", backend=False,
            layers=False)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (SymnetError, FileNotFoundError, ValueError) as e:
        from . import parallel
        w = parallel._world             # None when no world was set up
        if isinstance(e, parallel.ParallelError) and w is not None and not w.is_root:
            return 1                    # the same message, printed by rank 0
        print(f"symnet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"symnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # output piped into `head` and the like
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
