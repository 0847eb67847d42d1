"""The Plan report: per step the launch shape, bytes moved, flops, and for a named device
a roofline time marked as a paper estimate, checked against closed forms."""
from __future__ import annotations

import copy
import json

import pytest

import symnet as sn
from symnet.codegen import lower
from symnet.codegen.plan import Step
from symnet.codegen.report import DEVICES, report_rows, report_table

H100_BW, H100_FP32 = 3.35e12, 67e12        # bytes/s, FLOP/s (FP32, no tensor cores)
A100_BW, A100_FP32 = 2.039e12, 19.5e12


def lowered(build, backend="cuda-emu"):
    with sn.graph_scope() as g:
        ins, outs = build()
        return lower.lower(g, [t.id for t in ins], [t.id for t in outs], backend)


def elementwise_plan(n=4096):
    def build():
        x = sn.input("x", (n,))
        return [x], [sn.exp(x) * 2.0 + 1.0]
    return lowered(build)


def matmul_plan(m, k, n):
    def build():
        a, b = sn.input("a", (m, k)), sn.input("b", (k, n))
        return [a, b], [sn.matmul(a, b)]
    return lowered(build)


def test_device_table_holds_the_datasheet_figures():
    assert DEVICES["H100 SXM"].bandwidth == H100_BW
    assert DEVICES["H100 SXM"].fp32_peak == H100_FP32
    assert DEVICES["A100 SXM"].bandwidth == A100_BW
    assert DEVICES["A100 SXM"].fp32_peak == A100_FP32


def test_memory_bound_elementwise_kernel():
    n = 4096
    plan = elementwise_plan(n)
    (row,) = report_rows(plan, device="H100 SXM")
    (step,) = plan.steps
    # one fused kernel reading x and writing y once: 2 * n float32
    assert row["kind"] == "kernel" and row["bytes"] == 2 * 4 * n
    assert (row["grid"], row["block"]) == (step.grid, step.block)
    assert row["flops"] is None                       # not counted for elementwise kernels
    assert row["est_seconds"] == pytest.approx(2 * 4 * n / H100_BW, rel=1e-12)
    assert row["est_bound"] == "memory"
    assert "estimate" in row["estimate"] and "not a measurement" in row["estimate"]
    (a100,) = report_rows(plan, device="A100 SXM")
    assert a100["est_seconds"] == pytest.approx(2 * 4 * n / A100_BW, rel=1e-12)


def test_compute_bound_matmul():
    m, k, n = 256, 192, 320
    plan = matmul_plan(m, k, n)
    rows = report_rows(plan, device="H100 SXM")
    (gemm,) = [r for r in rows if r["flops"] is not None]
    flops, nbytes = 2 * m * n * k, 4 * (m * k + k * n + m * n)
    assert gemm["flops"] == flops and gemm["bytes"] == nbytes
    # arithmetic intensity flops / bytes is above H100's 67e12 / 3.35e12 = 20 flop/byte
    assert flops / nbytes > H100_FP32 / H100_BW
    assert gemm["est_seconds"] == pytest.approx(flops / H100_FP32, rel=1e-12)
    assert gemm["est_bound"] == "compute"
    a100 = [r for r in report_rows(plan, device="A100 SXM") if r["flops"] is not None][0]
    assert a100["est_seconds"] == pytest.approx(flops / A100_FP32, rel=1e-12)
    # a thin product of the same inner size is memory bound
    thin = [r for r in report_rows(matmul_plan(1, k, n), "H100 SXM") if r["flops"]][0]
    assert thin["est_bound"] == "memory"
    assert thin["est_seconds"] == pytest.approx(4 * (k + k * n + n) / H100_BW, rel=1e-12)


def test_table_heads_the_column_as_an_estimate_and_totals_it():
    plan = matmul_plan(64, 32, 48)
    rows = report_rows(plan, device="H100 SXM")
    text = report_table(plan, device="H100 SXM")
    head = text.splitlines()[1]
    assert "estimate µs" in head
    assert "ESTIMATES ON PAPER for H100 SXM" in text and "not measurements" in text
    total = [ln for ln in text.splitlines() if ln.split()[:1] == ["total"]][0]
    est_total = sum(r["est_seconds"] for r in rows)
    assert total.split()[-1] == f"{est_total * 1e6:.3f}"
    assert f"{sum(r['bytes_read'] for r in rows):,}" in total
    for r in rows:
        line = [ln for ln in text.splitlines() if f" {r['name']} " in ln][0]
        if r["kind"] == "kernel":
            assert f"{r['grid']}x{r['block']}" in line
        else:           # a cuBLAS call: the library picks its launch
            assert r["kind"] == "gemm" and r["grid"] is None and " - " in line
        assert f"{r['est_seconds'] * 1e6:.3f}" in line
    plain = report_table(plan)
    assert "estimate" not in plain.lower() and "total" in plain


def test_unknown_device_names_the_known_ones():
    plan = elementwise_plan(8)
    with pytest.raises(ValueError, match=r"unknown device 'V100'.*'A100 SXM', 'H100 SXM'"):
        report_rows(plan, device="V100")
    with pytest.raises(ValueError, match="known devices"):
        report_table(plan, device="H200")


def test_rows_are_json_and_take_any_step_kind():
    """A library GEMM step and a host step (as other lowerings add them) get rows; the
    host step no estimate."""
    plan = copy.deepcopy(elementwise_plan(16))
    batch, m, n, k = 3, 40, 50, 60
    plan.steps.append(Step("gemm", "sgemm_strided_batched", [], ops=["matmul#1"],
                           bytes_read=4 * batch * (m * k + k * n),
                           bytes_written=4 * batch * m * n,
                           attrs={"m": m, "n": n, "k": k, "batch": batch,
                                  "flops": 2 * batch * m * n * k}))
    plan.steps.append(Step("host", "py_layer", [], ops=["python#2"], bytes_read=64,
                           bytes_written=32))
    rows = json.loads(json.dumps(report_rows(plan, device="H100 SXM")))
    gemm, host = rows[-2], rows[-1]
    assert gemm["kind"] == "gemm" and (gemm["grid"], gemm["block"]) == (None, None)
    assert gemm["flops"] == 2 * batch * m * n * k
    assert gemm["est_seconds"] == pytest.approx(
        max(gemm["bytes"] / H100_BW, gemm["flops"] / H100_FP32), rel=1e-12)
    assert host["est_seconds"] is None and host["est_bound"] == "host"
    assert host["bytes"] == 96 and host["flops"] is None
    text = report_table(plan, device="H100 SXM")
    assert "1 host steps are not estimated" in text
    # a gemm step with m, n, k but no recorded flops: 2 * batch * m * n * k
    del plan.steps[-2].attrs["flops"]
    assert report_rows(plan)[-2]["flops"] == 2 * batch * m * n * k
    del plan.steps[-2].attrs["batch"]
    assert report_rows(plan)[-2]["flops"] == 2 * m * n * k


def test_cpu_plan_has_no_launch_shape():
    def build():
        x = sn.input("x", (100,))
        return [x], [sn.tanh(x)]
    (row,) = report_rows(lowered(build, "cpu"), device="H100 SXM")
    assert (row["grid"], row["block"]) == (None, None)
    assert row["est_seconds"] == pytest.approx(800 / H100_BW, rel=1e-12)
