"""Fuzzed prototxt: every input either parses or raises a clear PrototxtError.

Seeded mutations of real files (truncation every 50 bytes, byte flips, token edits),
random bytes, deep nesting and huge numbers. Nothing else may escape (no RecursionError,
MemoryError, UnicodeError, ValueError from inside protobuf), and nothing may hang.
"""
import pathlib
import random
import re
import time

import pytest

from symnet.formats.prototxt import PrototxtError, parse_net, parse_solver
from symnet.formats.upgrade import upgrade_net, upgrade_solver

MODELS = pathlib.Path(__file__).parents[1] / "data" / "models"
NETS = ["bvlc_mnist/lenet_train_test.prototxt", "mnist_v1/lenet.prototxt",
        "bvlc_caffenet/train_val.prototxt", "bvlc_pycaffe/linreg.prototxt",
        "mtcnn/det1.prototxt", "bvlc_mnist/mnist_autoencoder.prototxt"]
SOLVER = "bvlc_mnist/lenet_consolidated_solver.prototxt"
def short_id(value):
    """A readable test id for a long generated input."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:16]}..len{len(value)}"


LOCATED = re.compile(r"^(<string>|<bytes>|fuzz\.prototxt)(:\d+:\d+)?: \S")


def check(data, parse=parse_net, upgrade=upgrade_net):
    """Parse; on failure the error must be a located PrototxtError."""
    try:
        message = parse(data, filename="fuzz.prototxt")
    except PrototxtError as e:
        assert LOCATED.match(str(e)), str(e)
        assert len(str(e)) < 2000
        return "error"
    try:
        upgrade(message)
    except PrototxtError:
        pass
    return "ok"


@pytest.mark.parametrize("name", NETS + [SOLVER])
def test_truncation_every_50_bytes(name):
    data = (MODELS / name).read_bytes()
    parse = parse_solver if name == SOLVER else parse_net
    upgrade = upgrade_solver if name == SOLVER else upgrade_net
    results = [check(data[:n], parse, upgrade) for n in range(0, len(data), 50)]
    assert "error" in results and results[0] == "ok"


@pytest.mark.parametrize("seed", range(4))
def test_random_byte_flips(seed):
    rng = random.Random(seed)
    for name in NETS:
        data = bytearray((MODELS / name).read_bytes())
        for _ in range(40):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                i = rng.randrange(len(mutated))
                mutated[i] = rng.choice([rng.randrange(256), ord(rng.choice('{}<>:"\'#[],;'))])
            check(bytes(mutated))


@pytest.mark.parametrize("seed", range(3))
def test_token_level_mutations(seed):
    rng = random.Random(100 + seed)
    text = (MODELS / NETS[2]).read_text()
    tokens = re.findall(r'"[^"\n]*"|\S+|\s+', text)
    for _ in range(60):
        mutated = list(tokens)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(mutated))
            op = rng.randrange(4)
            if op == 0:
                del mutated[i]
            elif op == 1:
                mutated.insert(i, rng.choice(tokens))
            elif op == 2:
                mutated[i] = rng.choice(["{", "}", ":", "<", "[", "-", "0x", "1e99999",
                                         "'", '"', "#", "\\", "\x00", "é", "TRAIN"])
            else:
                j = rng.randrange(len(mutated))
                mutated[i], mutated[j] = mutated[j], mutated[i]
        check("".join(mutated))


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes(seed):
    rng = random.Random(200 + seed)
    for _ in range(150):
        check(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
    alphabet = 'layer{}<>[]:;,"\'#\n \t0123456789.-+eEinfxname_type'
    for _ in range(150):
        check("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))))


@pytest.mark.parametrize("text", [
    "{" * 10000, "}" * 10000, "layer {" * 10000, "layer <" * 10000, "[" * 10000,
    "layer { convolution_param { weight_filler {" * 3000,
    'layer { name: "x" ' + "convolution_param { " * 10000,
    "layer " * 10000, ":" * 10000, '"' * 10001, "#" * 100000, "layer {\n" * 20000,
    'layer { bottom: [' + '"a", ' * 20000 + ']}',
], ids=short_id)
def test_deep_nesting_and_long_inputs(text):
    t0 = time.perf_counter()
    check(text)
    check(text, parse_solver, upgrade_solver)
    check("net_param { " * 5000, parse_solver, upgrade_solver)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("number", [
    "9" * 30, "-" + "9" * 30, "9" * 5000, "0x" + "f" * 40, "1e999999", "-1e999999",
    "1" + "0" * 100000, "0" * 5000 + "1", "1.5e", "--1", "+1", "0x", "08", "1e",
    "18446744073709551616", "-9223372036854775809", "nan", "-nan", "infinit",
], ids=short_id)
def test_huge_and_malformed_numbers(number):
    for template in ["layer {{ convolution_param {{ num_output: {} }} }}",
                     "input_dim: {}", "input_shape {{ dim: {} }}",
                     "layer {{ relu_param {{ negative_slope: {} }} }}",
                     "layer {{ pooling_param {{ pool: {} }} }}",
                     "force_backward: {}", "layer {{ loss_weight: [{}] }}"]:
        check(template.format(number))
    check(f"random_seed: {number}", parse_solver, upgrade_solver)


def test_invalid_utf8_everywhere():
    data = (MODELS / NETS[0]).read_bytes()
    rng = random.Random(7)
    for _ in range(50):
        i = rng.randrange(len(data))
        bad = data[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88"]) + data[i:]
        with pytest.raises(PrototxtError, match="UTF-8"):
            parse_net(bad, filename="fuzz.prototxt")
