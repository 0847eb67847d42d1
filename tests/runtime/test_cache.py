"""The disk cache of built modules: miss then hit, keys, corrupted and interrupted
entries, concurrent builds, unsafe directories and compile errors. Every test has its
own ``SYMNET_CACHE_DIR``."""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import symnet as sn
from symnet.runtime import cache
from symnet.runtime.cache import CacheError, CompileError

FLAGS = ["-O2", "-fPIC", "-shared"]


def source(tag="a"):
    return f"/* cache test {tag} */\nfloat sn_probe(float x) {{ return x * 2.0f + 1.0f; }}\n"


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "symnet-cache"
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(root))
    return root


def counts():
    return dict(cache.stats)


def entries(root, suffix=".so"):
    return sorted(p.name for p in root.iterdir() if p.name.endswith(suffix))


def probe(path):
    lib = ctypes.CDLL(str(path))
    lib.sn_probe.restype = ctypes.c_float
    lib.sn_probe.argtypes = [ctypes.c_float]
    return lib.sn_probe(3.0)


def test_miss_then_hit(cache_root):
    before = counts()
    path = cache.build(source(), ".c", "gcc", FLAGS)
    assert cache.stats["misses"] == before["misses"] + 1
    assert cache.stats["hits"] == before["hits"]
    assert path.parent == cache_root and path.exists()
    assert probe(path) == 7.0
    again = cache.build(source(), ".c", "gcc", FLAGS)
    assert again == path
    assert cache.stats["hits"] == before["hits"] + 1
    assert cache.stats["misses"] == before["misses"] + 1
    assert entries(cache_root) == [path.name]
    # the sidecar holds the library's sha256; nothing temporary is left behind
    sidecar = path.with_suffix(".sha256")
    assert sidecar.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in cache_root.iterdir()) == sorted([path.name, sidecar.name])


def test_created_private(cache_root):
    cache.build(source(), ".c", "gcc", FLAGS)
    assert cache_root.stat().st_mode & 0o022 == 0


def test_key_covers_source_flags_and_compiler(cache_root, monkeypatch):
    p1 = cache.build(source("x"), ".c", "gcc", FLAGS)
    p2 = cache.build(source("y"), ".c", "gcc", FLAGS)
    p3 = cache.build(source("x"), ".c", "gcc", FLAGS + ["-DSN_OTHER"])
    assert len({p1, p2, p3}) == 3
    monkeypatch.setattr(cache, "compiler_version", lambda compiler: "gcc (another) 0.0")
    before = counts()
    p4 = cache.build(source("x"), ".c", "gcc", FLAGS)
    assert p4 not in (p1, p2, p3)
    assert cache.stats["misses"] == before["misses"] + 1


def test_compiled_function_hits_cache(cache_root):
    for backend in ("cpu", "cuda-emu"):
        with sn.graph_scope():
            x = sn.input("x", (3, 4))
            y = sn.tanh(x) * 2.0 + x.sum(1, keepdims=True)
            before = counts()
            f1 = sn.function([x], y, backend=backend)
            mid = counts()
            f2 = sn.function([x], y, backend=backend)
            after = counts()
        assert mid["misses"] == before["misses"] + 1, backend
        assert after["hits"] == mid["hits"] + 1 and after["misses"] == mid["misses"], backend
        a = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
        np.testing.assert_array_equal(f1(a), f2(a))
    assert len(entries(cache_root)) == 2


def test_corrupted_entry_is_rebuilt(cache_root):
    path = cache.build(source(), ".c", "gcc", FLAGS)
    good = path.read_bytes()
    path.write_bytes(b"\x7fELF garbage, not a shared library" * 10)
    before = counts()
    again = cache.build(source(), ".c", "gcc", FLAGS)
    assert again == path
    assert cache.stats["misses"] == before["misses"] + 1
    assert cache.stats["hits"] == before["hits"]
    assert path.read_bytes() != b"\x7fELF garbage, not a shared library" * 10
    assert len(path.read_bytes()) == len(good)
    assert path.with_suffix(".sha256").read_text().strip() == \
        hashlib.sha256(path.read_bytes()).hexdigest()
    # load in a fresh process: this one may still have the first library mapped
    code = textwrap.dedent(f"""
        import ctypes
        lib = ctypes.CDLL({str(path)!r})
        lib.sn_probe.restype = ctypes.c_float
        lib.sn_probe.argtypes = [ctypes.c_float]
        print(lib.sn_probe(3.0))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "7.0", out.stderr


def test_truncated_entry_and_missing_sidecar_are_rebuilt(cache_root):
    path = cache.build(source(), ".c", "gcc", FLAGS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])          # an interrupted copy
    before = counts()
    cache.build(source(), ".c", "gcc", FLAGS)
    assert cache.stats["misses"] == before["misses"] + 1
    assert len(path.read_bytes()) == len(data)
    assert path.with_suffix(".sha256").read_text().strip() == \
        hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".sha256").unlink()              # a build killed before the sidecar
    before = counts()
    cache.build(source(), ".c", "gcc", FLAGS)
    assert cache.stats["misses"] == before["misses"] + 1
    assert path.with_suffix(".sha256").exists()


def test_leftover_temporary_directory_is_harmless(cache_root):
    """A build interrupted after mkdtemp leaves a directory that is never loaded."""
    path = cache.build(source(), ".c", "gcc", FLAGS)
    key = path.stem
    path.unlink()
    path.with_suffix(".sha256").unlink()
    junk = cache_root / f"{key}.interrupted"
    junk.mkdir()
    (junk / "module.so").write_bytes(b"half a library")
    (junk / "sha256").write_text(hashlib.sha256(b"half a library").hexdigest())
    again = cache.build(source(), ".c", "gcc", FLAGS)
    assert again == path and probe_in_subprocess(again) == "7.0"


def probe_in_subprocess(path):
    code = (f"import ctypes; lib = ctypes.CDLL({str(path)!r}); "
            "lib.sn_probe.restype = ctypes.c_float; lib.sn_probe.argtypes = [ctypes.c_float]; "
            "print(lib.sn_probe(3.0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_concurrent_builds_of_one_source(cache_root, tmp_path):
    """Several processes build the same module at once: all succeed, one entry stays."""
    go = tmp_path / "go"
    src = source("concurrent") + "".join(f"float sn_pad{i}(float x) {{ return x + {i}.0f; }}\n"
                                         for i in range(300))
    code = textwrap.dedent(f"""
        import os, sys, time
        from symnet.runtime import cache
        open({str(tmp_path)!r} + "/ready-" + sys.argv[1], "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        path = cache.build({src!r}, ".c", "gcc", {FLAGS!r})
        import ctypes
        lib = ctypes.CDLL(str(path))
        lib.sn_probe.restype = ctypes.c_float
        lib.sn_probe.argtypes = [ctypes.c_float]
        assert lib.sn_probe(3.0) == 7.0
        print(path, cache.stats["misses"], cache.stats["hits"])
    """)
    env = dict(os.environ, SYMNET_CACHE_DIR=str(cache_root))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(4)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)          # every interpreter started and waits for the signal
    go.write_text("go")
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {out.split()[0] for out, _ in results}
    assert len(paths) == 1
    assert len(entries(cache_root)) == 1
    assert len(entries(cache_root, ".sha256")) == 1
    assert [p for p in cache_root.iterdir() if p.is_dir()] == []
    (path,) = paths
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(path[:-3] + ".sha256") as f:
        assert f.read().strip() == digest
    # the processes really raced: at least two of them compiled
    assert sum(int(out.split()[1]) for out, _ in results) >= 2, results


def test_directory_writable_by_others_is_refused(cache_root):
    cache_root.mkdir()
    cache_root.chmod(0o777)
    with pytest.raises(CacheError, match="writable by others"):
        cache.build(source(), ".c", "gcc", FLAGS)
    with pytest.raises(CacheError, match=str(cache_root)):
        cache.cache_dir()
    cache_root.chmod(0o775)
    with pytest.raises(CacheError):
        cache.cache_dir()
    # and nothing was built or loaded from it
    assert list(cache_root.iterdir()) == []
    cache_root.chmod(0o700)
    assert cache.cache_dir() == cache_root


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the directory away")
def test_directory_of_another_user_is_refused(cache_root):
    cache_root.mkdir(mode=0o700)
    os.chown(cache_root, 12345, -1)
    with pytest.raises(CacheError, match="uid 12345"):
        cache.build(source(), ".c", "gcc", FLAGS)


def test_compile_error_shows_message_and_kept_source(cache_root):
    bad = "float broken(float x) { return x +; }\n"
    before = counts()
    with pytest.raises(CompileError) as info:
        cache.build(bad, ".c", "gcc", FLAGS)
    msg = str(info.value)
    assert "error" in msg and "expected expression" in msg, msg
    kept = [p for p in cache_root.iterdir() if ".failed" in p.name]
    assert len(kept) == 1 and str(kept[0]) in msg
    assert kept[0].read_text() == bad
    assert entries(cache_root) == []
    assert [p for p in cache_root.iterdir() if p.is_dir()] == []
    assert cache.stats["misses"] == before["misses"] + 1


def test_missing_compiler_is_a_compile_error(cache_root):
    with pytest.raises(CompileError, match="no-such-cc"):
        cache.build(source(), ".c", "no-such-cc-symnet", FLAGS)


# ------------------------------------------------------------------ private entries
def test_files_are_private_whatever_the_umask(cache_root):
    old = os.umask(0)
    try:
        path = cache.build(source("umask"), ".c", "gcc", FLAGS)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o700
    assert path.with_suffix(".sha256").stat().st_mode & 0o777 == 0o600
    assert cache_root.stat().st_mode & 0o077 == 0


def test_an_entry_others_may_write_is_rebuilt_not_loaded(cache_root):
    """A planted module with a matching checksum but group/other write is never loaded:
    the entry is rebuilt."""
    path = cache.build(source("open"), ".c", "gcc", FLAGS)
    evil = "float sn_probe(float x) { return x * 3.0f; }\n"
    planted = cache.build(evil, ".c", "gcc", FLAGS)
    os.replace(planted, path)
    os.replace(planted.with_suffix(".sha256"), path.with_suffix(".sha256"))
    # with the user's own mode the checksum matches, so the entry would load as it is
    assert probe_in_subprocess(cache.build(source("open"), ".c", "gcc", FLAGS)) == "9.0"
    os.chmod(path, 0o777)
    before = counts()
    again = cache.build(source("open"), ".c", "gcc", FLAGS)
    assert cache.stats["misses"] == before["misses"] + 1
    assert again.stat().st_mode & 0o777 == 0o700
    assert probe_in_subprocess(again) == "7.0"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to plant a file of another user")
def test_an_entry_of_another_user_is_refused(cache_root):
    path = cache.build(source("owner"), ".c", "gcc", FLAGS)
    os.chown(path, 12345, -1)
    with pytest.raises(CacheError, match=r"belongs to uid 12345.*rm -r"):
        cache.build(source("owner"), ".c", "gcc", FLAGS)


def test_an_entry_that_became_a_directory_is_rebuilt(cache_root):
    path = cache.build(source("dir"), ".c", "gcc", FLAGS)
    path.unlink()
    path.mkdir()
    (path / "junk").write_text("x")
    again = cache.build(source("dir"), ".c", "gcc", FLAGS)
    assert again.is_file() and probe_in_subprocess(again) == "7.0"


def test_stale_work_directories_and_failed_sources_are_swept(cache_root):
    """A build killed half-way (kill -9) leaves its work directory; failed builds leave
    their sources. Those older than an hour go when the next build runs."""
    cache_root.mkdir(mode=0o700)
    old = time.time() - 2 * cache.STALE_SECONDS
    stale, fresh = cache_root / "abc.killed", cache_root / "abd.running"
    for d in (stale, fresh):
        d.mkdir()
        (d / "module.c").write_text("int x;")
    failed = cache_root / "abe.failed.c"
    failed.write_text("int broken(")
    for p in (stale, failed):
        os.utime(p, (old, old))
    cache.build(source("sweep"), ".c", "gcc", FLAGS)
    assert not stale.exists() and not failed.exists() and fresh.exists()


@pytest.mark.skipif(os.getuid() == 0, reason="root writes into a read-only directory")
def test_read_only_directory_is_a_cache_error_that_says_the_fix(cache_root):
    """Entries already built still load from a directory the user made read-only; a
    build that needs to write says which directory and how to fix it."""
    built = cache.build(source("ro"), ".c", "gcc", FLAGS)
    cache_root.chmod(0o500)
    try:
        assert cache.build(source("ro"), ".c", "gcc", FLAGS) == built
        with pytest.raises(CacheError, match=rf"cannot write to the cache directory "
                                             rf"{cache_root}.*chmod u\+w"):
            cache.build(source("ro-new"), ".c", "gcc", FLAGS)
    finally:
        cache_root.chmod(0o700)


def test_cache_path_that_cannot_be_a_directory_is_a_cache_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(CacheError, match=rf"cannot create the cache directory {blocker}"):
        cache.build(source(), ".c", "gcc", FLAGS)
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(blocker))
    with pytest.raises(CacheError, match="exists and is not a directory"):
        cache.cache_dir()


def test_cache_errors_are_symnet_errors():
    assert issubclass(CacheError, sn.SymnetError) and issubclass(CompileError, sn.SymnetError)
