"""The cpu backend's threads: SYMNET_NUM_THREADS and OpenMP's own settings (read in a
fresh process each, as OpenMP reads them once), the team a kernel gets, the adaptation
to busy cores (its decisions, and kernels still correct on a reduced team)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from symnet.runtime import cpu

PROBE = textwrap.dedent("""
    import json, os, numpy as np, symnet as sn
    from symnet.runtime import cpu
    x = np.arange(100003, dtype=np.float32) % 13
    with sn.graph_scope():
        xi = sn.input("x", x.shape)
        fn = sn.function([xi], xi * 2.0 + 1.0, backend="cpu")
    np.testing.assert_array_equal(fn(x), x * 2 + 1)
    be = fn._impl.executor.backend
    lib = be.governor._libgomp()
    print(json.dumps({"configured": cpu.configured_threads(), "team": be.team_size(),
                      "team_asking_3": be.team_size(3),
                      "dynamic": lib.omp_get_dynamic(),
                      "spincount": os.environ.get("GOMP_SPINCOUNT"),
                      "cores": len(os.sched_getaffinity(0))}))
""")


def _probe(**env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("SYMNET_NUM_THREADS", "OMP_NUM_THREADS", "GOMP_SPINCOUNT",
                         "OMP_DYNAMIC")}
    # the test is about the settings: no adaptation to the load of a shared machine
    full.update(SYMNET_ADAPTIVE_THREADS="0")
    full.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=full, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("symnet_n, omp_n, want", [("1", "2", 1), ("2", "1", 2),
                                                    ("3", None, 3), (None, "1", 1)])
def test_symnet_num_threads_wins_over_omp_num_threads(symnet_n, omp_n, want):
    env = {}
    if symnet_n is not None:
        env["SYMNET_NUM_THREADS"] = symnet_n
    if omp_n is not None:
        env["OMP_NUM_THREADS"] = omp_n
    got = _probe(**env)
    assert got["configured"] == want
    assert got["team"] == want
    assert got["team_asking_3"] == 3        # a region's own request is honoured


def test_default_is_the_available_cores():
    got = _probe()
    assert got["configured"] == got["cores"] == got["team"]


def test_bad_symnet_num_threads_is_an_error():
    env = dict(os.environ, SYMNET_NUM_THREADS="two")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode != 0
    assert "SYMNET_NUM_THREADS='two'" in out.stderr


def test_user_openmp_settings_are_kept():
    """The runtime's GOMP_SPINCOUNT is a default only; a user's OMP_DYNAMIC stays."""
    assert _probe()["spincount"] == "100000"
    got = _probe(GOMP_SPINCOUNT="1234", OMP_DYNAMIC="true", OMP_NUM_THREADS="2")
    assert got["spincount"] == "1234"
    assert got["dynamic"] == 1


class FakeDelay:
    def __init__(self):
        self.now, self.ns = 0.0, 0

    def clock(self):
        return self.now

    def delay(self):
        return self.ns

    def advance(self, seconds, frac):
        self.now += seconds
        self.ns += int(seconds * frac * 1e9)


def test_governor_decisions():
    f = FakeDelay()
    g = cpu.ThreadGovernor(full=2, enabled=True, clock=f.clock, delay=f.delay)
    g._libgomp = lambda: pytest.fail("no OpenMP call expected")
    g.apply = lambda: None
    g.enter()                                   # first sample
    for _ in range(5):                          # quiet: the full team
        f.advance(0.25, 0.01)
        g.enter()
        assert g.threads == 2
    f.advance(0.1, 0.9)                         # a window not yet complete
    g.enter()
    assert g.threads == 2
    f.advance(0.15, 0.9)                        # busy window: one thread
    g.enter()
    assert g.threads == 1 and g.until == pytest.approx(f.now + 1.0)
    f.advance(0.5, 0.3)
    g.enter()
    assert g.threads == 1                       # held
    f.advance(0.6, 0.3)
    g.enter()
    assert g.threads == 2 and g.trial           # tried again after the hold
    f.advance(0.25, 0.6)                        # still busy: held twice as long
    g.enter()
    assert g.threads == 1 and g.until == pytest.approx(f.now + 2.0)
    f.advance(2.1, 0.3)
    g.enter()
    assert g.threads == 2
    f.advance(0.25, 0.0)                        # quiet again: the full team stays
    g.enter()
    assert g.threads == 2 and not g.trial and g.hold == 1.0
    for _ in range(4):
        f.advance(0.25, 0.0)
        g.enter()
        assert g.threads == 2


def test_governor_reduced_sizes_and_off_switch():
    f = FakeDelay()
    assert cpu.ThreadGovernor(full=2, clock=f.clock, delay=f.delay).reduced == 1
    assert cpu.ThreadGovernor(full=3, clock=f.clock, delay=f.delay).reduced == 1
    assert cpu.ThreadGovernor(full=8, clock=f.clock, delay=f.delay).reduced == 4
    assert not cpu.ThreadGovernor(full=1, enabled=True, clock=f.clock, delay=f.delay).enabled
    assert not cpu.ThreadGovernor(full=4, enabled=False, clock=f.clock,
                                  delay=f.delay).enabled


REDUCED = textwrap.dedent("""
    import numpy as np, symnet as sn
    from symnet.runtime import cpu
    r = np.random.default_rng(0)
    x = r.standard_normal((4, 3, 12, 12)).astype(np.float32)
    w = r.standard_normal((5, 3, 3, 3)).astype(np.float32)
    v = r.standard_normal((2, 5 * 6 * 6)).astype(np.float32)
    def build(backend):
        with sn.graph_scope():
            xi, wi, vi = sn.input("x", x.shape), sn.input("w", w.shape), sn.input("v", v.shape)
            y = sn.max_pool2d(sn.conv2d(xi, wi, pad=1), 2)
            z = sn.matmul(sn.reshape(y, (4, 180)), sn.transpose(vi))
            loss = sn.sum(z * z)
            return sn.function([xi, wi, vi], [z] + list(sn.grad(loss, [xi, wi, vi])),
                               backend=backend)
    g = cpu.governor()
    assert g.full == 2
    g.HOLD = 1e9
    g.observe(0.9, 0.0)                 # as after a busy window: one thread
    g.enabled = False
    f = build("cpu")
    outs = f(x, w, v)
    be = f._impl.executor.backend
    assert be.team_size() == 1 and be.team_size(2) == 1
    for a, b in zip(outs, build("numpy")(x, w, v)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    print("OK")
""")


def test_kernels_correct_on_a_reduced_team():
    """Lowered for 2 threads (templates that ask for a team of 2), run on 1."""
    env = dict(os.environ, SYMNET_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", REDUCED], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr + out.stdout
