"""Shared fixtures of the symnet test suite.

- ``backend``: the backends every behaviour is checked on (``numpy``, the reference;
  ``cpu``; ``cuda-emu``; ``cuda``, which skips without a usable GPU and pycuda).
- A listener on ``symnet.codegen.lower.module_listeners``, registered at import time,
  records every module the suite lowers. tests/test_zz_nvcc.py (collected last)
  compiles every recorded CUDA module with nvcc; ``emitted_modules`` hands it the
  record.
"""
from __future__ import annotations

import hashlib

import pytest

from symnet.codegen import lower as _lower

BACKENDS = ["numpy", "cpu", "cuda-emu", "cuda"]
COMPILED_BACKENDS = ["cpu", "cuda-emu", "cuda"]
CUDA_SKIP_REASON = "needs an NVIDIA GPU and pycuda"

# backend -> {sha256 of the module text: module text}
EMITTED_MODULES: dict = {"cpu": {}, "cuda-emu": {}, "cuda": {}}


def _record_module(backend, source):
    EMITTED_MODULES.setdefault(backend, {})[
        hashlib.sha256(source.encode()).hexdigest()] = source


if _record_module not in _lower.module_listeners:
    _lower.module_listeners.append(_record_module)


def cuda_modules() -> dict:
    """Every distinct CUDA module text lowered so far (cuda and cuda-emu share the text),
    keyed by sha256."""
    out = {}
    for be in ("cuda-emu", "cuda"):
        out.update(EMITTED_MODULES.get(be, {}))
    return out


def _skip_unusable(name):
    if name == "cuda":
        from symnet.runtime import devices
        if not devices.cuda_usable():
            pytest.skip(CUDA_SKIP_REASON)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend; the numpy reference included."""
    _skip_unusable(request.param)
    return request.param


@pytest.fixture(params=COMPILED_BACKENDS)
def compiled_backend(request):
    """The backends that run generated code (not the numpy reference)."""
    _skip_unusable(request.param)
    return request.param


@pytest.fixture
def emitted_modules():
    """The record of lowered modules: backend -> {sha256: source}."""
    return EMITTED_MODULES
