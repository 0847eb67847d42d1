"""The README's "A first look" example runs as written, and its gradients agree with
gradcheck and with a closed form."""
import pathlib
import re

import numpy as np

import symnet as sn
from snhelp import check_grad, close

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def first_look_code():
    text = README.read_text()
    section = text[text.index("A first look"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_first_look_runs():
    code = first_look_code()
    assert "sn.grad(" in code and "sn.gradcheck(" in code
    ns = {}
    with sn.graph_scope():
        exec(compile(code, str(README), "exec"), ns)
    loss_v, gx_v, gw_v = ns["loss_v"], ns["gx_v"], ns["gw_v"]
    assert loss_v.shape == () and gx_v.shape == (2, 3, 4, 5) and gw_v.shape == (3,)
    assert all(np.all(np.isfinite(v)) for v in (loss_v, gx_v, gw_v))


def prelu_swish(t):
    w = sn.param("w", (3,), filler=sn.fillers.constant(0.25))
    y = sn.where(t > 0, t, w.reshape(1, 3, 1, 1) * t)
    return (y * sn.sigmoid(y)).sum()


def test_first_look_gradients_match_gradcheck():
    x = np.random.default_rng(9).standard_normal((2, 3, 4, 5))
    res = check_grad(prelu_swish, x, params=["w"])
    assert res.checked == x.size + 3


def test_first_look_gradients_closed_form():
    x = np.random.default_rng(10).standard_normal((2, 3, 4, 5)).astype(np.float32)
    with sn.graph_scope():
        t = sn.input("x", x.shape)
        loss = prelu_swish(t)
        w = [s for s in map(loss.graph.tensor, loss.graph.nx.nodes) if s.op.kind == "param"]
        gx, gw = sn.grad(loss, [t, w[0]])
        loss_v, gx_v, gw_v = sn.function([t], [loss, gx, gw], backend="numpy")(x)
    x64 = x.astype(np.float64)
    a = np.where(x64 > 0, 1.0, 0.25)
    y = a * x64
    s = 1 / (1 + np.exp(-y))
    dy = s + y * s * (1 - s)
    close(loss_v, (y * s).sum(), rtol=1e-5)
    close(gx_v, dy * a, rtol=1e-4)
    close(gw_v, np.where(x64 > 0, 0, dy * x64).sum(axis=(0, 2, 3)), rtol=1e-4)
