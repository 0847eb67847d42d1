"""Inspection of a Plan: one row per step and a readable table."""
from __future__ import annotations


def report_rows(plan) -> list:
    return [{"kind": s.kind, "name": s.name, "ops": list(s.ops), "bytes_read": s.bytes_read,
             "bytes_written": s.bytes_written, "boundary": s.boundary} for s in plan.steps]


def report_table(plan) -> str:
    rows = report_rows(plan)
    head = f"{'#':>3}  {'kind':<8} {'name':<32} {'ops':>4} {'read':>12} {'written':>12}"
    lines = [f"plan for backend '{plan.backend}': {len(rows)} steps", head, "-" * len(head)]
    for i, r in enumerate(rows):
        lines.append(f"{i:>3}  {r['kind']:<8} {r['name'][:32]:<32} {len(r['ops']):>4} "
                     f"{r['bytes_read']:>12,} {r['bytes_written']:>12,}")
    lines.append("-" * len(head))
    lines.append(f"{'':>3}  {'total':<8} {'':<32} {sum(len(r['ops']) for r in rows):>4} "
                 f"{sum(r['bytes_read'] for r in rows):>12,} "
                 f"{sum(r['bytes_written'] for r in rows):>12,}")
    bounds = [(i, r) for i, r in enumerate(rows) if r["boundary"]]
    if bounds:
        lines.append("")
        lines.append("fusion boundaries (why a value was written to memory):")
        for i, r in bounds:
            lines.append(f"  step {i} {r['name']}: {r['boundary']}")
    return "\n".join(lines)
