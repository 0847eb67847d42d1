"""Caffe's semantics where symnet used to differ (issue 13, item 5).

Each test says what Caffe does (from Caffe's sources) and checks symnet does the same.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import symnet as sn
from symnet import fillers
from symnet import functions as F
from symnet.data import base as data_base


# ----------------------------------------------------------------------------- filler RNG

@pytest.fixture
def keep_streams():
    """Put the process-wide streams back as they were, so test order does not matter."""
    saved = (fillers._STREAM[0], F._rng, data_base.base_seed())
    yield
    fillers._STREAM[0], F._rng = saved[0], saved[1]
    data_base.set_base_seed(saved[2])


def test_filler_stream_same_seed_same_values_successive_fills_differ(keep_streams):
    """Caffe: every filler draws from the one process-wide generator (Caffe::rng_stream)
    that Caffe::set_random_seed seeds; successive fills continue the stream, so two blobs
    (and two nets) filled in turn differ, and the same seed replays the same values."""
    xavier = fillers.xavier()
    fillers.set_random_seed(1234)
    a1 = xavier((20, 30), fillers.rng())
    a2 = xavier((20, 30), fillers.rng())
    fillers.set_random_seed(1234)
    b1 = xavier((20, 30), fillers.rng())
    b2 = xavier((20, 30), fillers.rng())
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    fillers.set_random_seed(1235)
    c1 = xavier((20, 30), fillers.rng())
    assert not np.array_equal(a1, c1)
    # the values are xavier's: uniform in [-sqrt(3 / fan_in), sqrt(3 / fan_in)]
    bound = np.sqrt(3.0 / 30)
    assert np.abs(a1).max() <= bound and np.abs(a1).max() > 0.9 * bound


def test_rng_is_one_generator_until_reseeded(keep_streams):
    fillers.set_random_seed(5)
    g = fillers.rng()
    assert isinstance(g, np.random.Generator)
    assert fillers.rng() is g
    first = g.random(4)
    fillers.set_random_seed(5)
    assert fillers.rng() is not g
    np.testing.assert_array_equal(fillers.rng().random(4), first)


def test_set_random_seed_seeds_everything(keep_streams):
    """Caffe::set_random_seed seeds the one generator everything random draws from: so
    does one call here (weight fillers, the functional front end's params, the data
    layers' base seed)."""
    def param_value():
        return F.param("w", (3, 4), {"type": "gaussian", "std": 1.0}).op.get_value().copy()

    fillers.set_random_seed(77)
    p1, p2 = param_value(), param_value()
    fillers.set_random_seed(77)
    q1 = param_value()
    np.testing.assert_array_equal(p1, q1)
    assert not np.array_equal(p1, p2)
    assert data_base.base_seed() == 77
    fillers.set_random_seed(78)
    assert data_base.base_seed() == 78


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (1.5, TypeError),
                                         ("3", TypeError), (True, TypeError)])
def test_set_random_seed_rejects_bad_seeds(keep_streams, seed, error):
    before = fillers.rng()
    with pytest.raises(error, match="set_random_seed: seed must be"):
        fillers.set_random_seed(seed)
    assert fillers.rng() is before


def test_stream_is_seeded_with_zero_at_import():
    """Reproducible by default (where Caffe would seed from the clock): a fresh process
    draws what numpy's generator seeded with 0 draws, run after run."""
    code = ("import json\nfrom symnet import fillers\n"
            "print(json.dumps(fillers.xavier()((5, 7), fillers.rng()).tolist()))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True, timeout=120).stdout for _ in range(2)]
    assert runs[0] == runs[1]
    expected = fillers.xavier()((5, 7), np.random.default_rng(0))
    np.testing.assert_array_equal(np.array(json.loads(runs[0]), np.float32), expected)
