"""Inspection of a Plan: one row per step and a readable table, with, for a named
device, a roofline time per step.

The roofline time is a paper estimate, never a measurement: a step takes at least the
time to move its bytes at the device's memory bandwidth and at least the time to do
its flops at the device's FP32 peak, so it is estimated as the larger of the two,
``max(bytes / bandwidth, flops / peak)``. Bytes are those the Plan records (each buffer
a step reads counted once, plus each buffer it writes), so caches, re-reads of tiles and
uncoalesced access are ignored; flops are those lowering records (GEMMs and
convolutions); other kernels' flops are not counted, so their estimate is the memory
bound alone. Launch and synchronisation overheads are not included. Host steps run
Python on the host and get no estimate.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """A device's paper figures: memory bandwidth and FP32 peak without tensor cores."""
    name: str
    bandwidth: float          # bytes per second
    fp32_peak: float          # FLOP per second, FP32, no tensor cores
    source: str = ""


# Vendor datasheet figures (NVIDIA H100 and A100 datasheets, SXM parts).
DEVICES = {d.name: d for d in (
    Device("H100 SXM", 3.35e12, 67e12, "HBM3 3.35 TB/s; FP32 67 TFLOP/s"),
    Device("A100 SXM", 2.039e12, 19.5e12, "HBM2e 2.039 TB/s (80 GB); FP32 19.5 TFLOP/s"),
)}

ESTIMATE_NOTE = ("roofline estimate on paper, max(bytes / bandwidth, flops / FP32 peak), "
                 "not a measurement; launch overhead not included")


def device_named(device) -> Device:
    """The Device for a name in DEVICES (any case), or a Device itself."""
    if isinstance(device, Device):
        return device
    if isinstance(device, str):
        for name, d in DEVICES.items():
            if name.lower() == device.strip().lower():
                return d
    known = ", ".join(repr(n) for n in sorted(DEVICES))
    raise ValueError(f"unknown device {device!r}: known devices are {known}")


def step_flops(step):
    """Flops of a step as lowering recorded them, or None where they are not counted:
    ``attrs["flops"]``, else for a library GEMM step 2 * batch * m * n * k."""
    flops = step.attrs.get("flops")
    if flops is not None:
        return int(flops)
    a = step.attrs
    if all(k in a for k in ("m", "n", "k")):
        return 2 * int(a.get("batch", 1)) * int(a["m"]) * int(a["n"]) * int(a["k"])
    return None


def roofline(nbytes, flops, device: Device):
    """(seconds, bound): the roofline time of moving ``nbytes`` and doing ``flops``
    (None: not counted) on ``device``, and which of the two bounds it."""
    t_mem = nbytes / device.bandwidth
    t_flop = (flops or 0) / device.fp32_peak
    return max(t_mem, t_flop), ("compute" if t_flop > t_mem else "memory")


def _launch_shape(plan, step):
    """(grid, block) of a CUDA kernel launch, else (None, None): a CPU kernel is an
    OpenMP loop, a library or host step is no launch of ours."""
    if step.kind == "kernel" and plan.backend in ("cuda", "cuda-emu"):
        return int(step.grid), int(step.block)
    return None, None


def report_rows(plan, device=None) -> list:
    """One JSON-serialisable dict per step: kind, name, ops, bytes read and written, the
    fusion boundary, the launch shape (grid, block; None where there is no launch), bytes
    moved, flops (None: not counted) and, for a named ``device``, ``est_seconds`` and
    ``est_bound`` ("memory", "compute"; "host" for host steps, whose estimate is None)
    with ``estimate`` saying what the figure is."""
    dev = device_named(device) if device is not None else None
    rows = []
    for s in plan.steps:
        grid, block = _launch_shape(plan, s)
        nbytes = int(s.bytes_read) + int(s.bytes_written)
        row = {"kind": s.kind, "name": s.name, "ops": list(s.ops), "bytes_read": s.bytes_read,
               "bytes_written": s.bytes_written, "boundary": s.boundary, "grid": grid,
               "block": block, "bytes": nbytes,
               "flops": None if s.kind == "host" else step_flops(s)}
        if dev is not None:
            row["device"] = dev.name
            if s.kind == "host":
                row.update(est_seconds=None, est_bound="host",
                           estimate="host step: Python on the host, not estimated")
            else:
                t, bound = roofline(nbytes, row["flops"], dev)
                row.update(est_seconds=t, est_bound=bound, estimate=ESTIMATE_NOTE)
        rows.append(row)
    return rows


def _fmt_flops(f):
    return "not counted" if f is None else f"{f:,}"


def _fmt_us(t):
    return "host" if t is None else f"{t * 1e6:.3f}"


def report_table(plan, device=None) -> str:
    """The rows as a table; with ``device``, a column of roofline estimates (µs) headed as
    such, a total line and a sentence saying these are paper estimates."""
    rows = report_rows(plan, device)
    dev = device_named(device) if device is not None else None
    est = f"{'estimate µs':>12} {'bound':<8}" if dev else ""
    head = (f"{'#':>3}  {'kind':<8} {'name':<32} {'ops':>4} {'launch':>12} {'read':>12} "
            f"{'written':>12} {'flops':>14} {est}").rstrip()
    lines = [f"plan for backend '{plan.backend}': {len(rows)} steps", head, "-" * len(head)]
    for i, r in enumerate(rows):
        launch = f"{r['grid']}x{r['block']}" if r["grid"] is not None else "-"
        cells = (f"{i:>3}  {r['kind']:<8} {r['name'][:32]:<32} {len(r['ops']):>4} "
                 f"{launch:>12} {r['bytes_read']:>12,} {r['bytes_written']:>12,} "
                 f"{_fmt_flops(r['flops']):>14}")
        if dev:
            cells += f" {_fmt_us(r['est_seconds']):>12} {r['est_bound']:<8}"
        lines.append(cells.rstrip())
    lines.append("-" * len(head))
    counted = [r["flops"] for r in rows if r["flops"] is not None]
    total = (f"{'':>3}  {'total':<8} {'':<32} {sum(len(r['ops']) for r in rows):>4} {'':>12} "
             f"{sum(r['bytes_read'] for r in rows):>12,} "
             f"{sum(r['bytes_written'] for r in rows):>12,} {sum(counted):>14,}")
    if dev:
        est_total = sum(r["est_seconds"] for r in rows if r["est_seconds"] is not None)
        total += f" {_fmt_us(est_total):>12}"
    lines.append(total.rstrip())
    not_counted = [r for r in rows if r["flops"] is None and r["kind"] != "host"]
    if not_counted:
        lines.append(f"flops are counted for GEMMs and convolutions only; {len(not_counted)} "
                     f"other steps' flops are not counted.")
    if dev:
        hosts = sum(r["kind"] == "host" for r in rows)
        launches = sum(r["grid"] is not None for r in rows)
        lines.append(
            f"estimate µs: ESTIMATES ON PAPER for {dev.name} ({dev.bandwidth / 1e12:g} TB/s, "
            f"{dev.fp32_peak / 1e12:g} TFLOP/s FP32 without tensor cores), not measurements: "
            f"per step max(bytes / bandwidth, flops / peak), a lower bound that ignores "
            f"caches, access patterns and the overhead of {launches} kernel launches"
            + (f"; {hosts} host steps are not estimated" if hosts else "") + ".")
    bounds = [(i, r) for i, r in enumerate(rows) if r["boundary"]]
    if bounds:
        lines.append("")
        lines.append("fusion boundaries (why a value was written to memory):")
        for i, r in bounds:
            lines.append(f"  step {i} {r['name']}: {r['boundary']}")
    return "\n".join(lines)
