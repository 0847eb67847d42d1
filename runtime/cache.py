"""Building shared libraries with the system compiler, cached on disk.

The cache lives in ``$SYMNET_CACHE_DIR`` or ``~/.cache/symnet``, a directory only the
user may write (symnet refuses one that others can write or that another user owns).
An entry's key hashes the source, the flags, the compiler's version and, for
``-march=native``, the CPU. Entries are written to a temporary file and renamed into
place, with a SHA-256 sidecar checked on every load, so concurrent builds and
interrupted builds never leave a broken or foreign library that gets loaded.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path


class CompileError(RuntimeError):
    """The compiler rejected a generated module; the message holds its output."""


class CacheError(RuntimeError):
    """The cache directory is unsafe to load code from."""


stats = {"hits": 0, "misses": 0}


def cache_dir() -> Path:
    path = Path(os.environ.get("SYMNET_CACHE_DIR") or Path.home() / ".cache" / "symnet")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise CacheError(f"cache directory {path} belongs to uid {st.st_uid}, not to you "
                         f"(uid {os.getuid()}); set SYMNET_CACHE_DIR to a directory of yours")
    if st.st_mode & 0o022:
        raise CacheError(f"cache directory {path} is writable by others (mode "
                         f"{oct(st.st_mode & 0o777)}); run `chmod go-w {path}` or set "
                         "SYMNET_CACHE_DIR")
    return path


@functools.lru_cache(maxsize=None)
def compiler_version(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise CompileError(f"C compiler '{compiler}' is not usable: {e}") from e
    return out.stdout.strip()


@functools.lru_cache(maxsize=None)
def cpu_identity() -> str:
    """What -march=native means here: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.uname().machine
    keep = [line for line in text.splitlines()
            if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(source: str, suffix: str, compiler: str, flags: list, libs: list = ()) -> Path:
    """Path of a shared library built from ``source`` (cached)."""
    key_parts = [source, suffix, compiler, " ".join(flags), " ".join(libs),
                 compiler_version(compiler)]
    if "-march=native" in flags:
        key_parts.append(cpu_identity())
    key = _digest("\0".join(key_parts).encode())[:40]
    root = cache_dir()
    lib = root / f"{key}.so"
    sidecar = root / f"{key}.sha256"
    if lib.exists() and sidecar.exists():
        try:
            if _digest(lib.read_bytes()) == sidecar.read_text().strip():
                stats["hits"] += 1
                return lib
        except OSError:
            pass
    stats["misses"] += 1
    work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root))
    src = work / f"module{suffix}"
    src.write_text(source)
    out = work / "module.so"
    # relative paths keep the temporary directory's name out of the binary
    cmd = [compiler, *flags, src.name, "-o", out.name, *libs]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if proc.returncode != 0:
        kept = root / f"{key}.failed{suffix}"
        os.replace(src, kept)
        _rmtree(work)
        raise CompileError(f"{compiler} failed on a generated module (source kept at {kept}):\n"
                           f"$ {' '.join(cmd)}\n{proc.stderr.strip()}")
    data = out.read_bytes()
    tmp_sidecar = work / "sha256"
    tmp_sidecar.write_text(_digest(data))
    os.replace(out, lib)
    os.replace(tmp_sidecar, sidecar)
    _rmtree(work)
    return lib


def _rmtree(path: Path):
    for p in path.iterdir():
        p.unlink()
    path.rmdir()
