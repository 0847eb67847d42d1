"""Building shared libraries with the system compiler, cached on disk.

The cache lives in ``$SYMNET_CACHE_DIR`` or ``~/.cache/symnet``, a directory only the
user may write (symnet refuses one that others can write or that another user owns).
An entry's key hashes the source, the flags, the compiler's version and, for
``-march=native``, the CPU. Entries are written to a temporary file and renamed into
place, with a SHA-256 sidecar checked on every load, so concurrent builds and
interrupted builds never leave a broken or foreign library that gets loaded.

Code loaded from the cache must be the user's own: every file is created with an
explicit mode (0600; 0700 for a shared library) whatever the umask, and an entry is
loaded only when it is a regular file owned by the user that nobody else may write. An
entry of the user's with the wrong mode, or broken in any way (a directory, truncated,
a bad checksum), is rebuilt; one owned by somebody else is refused with a CacheError
that names it and the fix. Work directories and kept sources of failed builds older
than an hour (a build killed half-way) are swept when a build runs.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import SymnetError


class CompileError(SymnetError, RuntimeError):
    """The compiler rejected a generated module; the message holds its output."""


class CacheError(SymnetError, RuntimeError):
    """The cache directory is unsafe to load code from."""


stats = {"hits": 0, "misses": 0}
STALE_SECONDS = 3600            # leftovers of builds older than this are swept


def cache_dir() -> Path:
    path = Path(os.environ.get("SYMNET_CACHE_DIR") or Path.home() / ".cache" / "symnet")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as e:
        why = "it exists and is not a directory" if isinstance(e, FileExistsError) \
            else e.strerror or str(e)
        raise CacheError(f"cannot create the cache directory {path}: {why}; set "
                         "SYMNET_CACHE_DIR to a directory you can write") from e
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


def _write_private(path: Path, data: bytes, mode=0o600):
    """Create ``path`` (which must not exist) with ``mode``, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _safe_entry(path: Path) -> bool:
    """Whether ``path`` may be loaded: a regular file of the user's that nobody else may
    write. False when it is missing, or the user's but broken or too open (rebuilt);
    CacheError when somebody else owns it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if st.st_uid != os.getuid():
        raise CacheError(f"cache entry {path} belongs to uid {st.st_uid}, not to you "
                         f"(uid {os.getuid()}); it is not loaded. Remove it (rm -r {path}) "
                         "or set SYMNET_CACHE_DIR to a directory of yours")
    return stat.S_ISREG(st.st_mode) and not st.st_mode & 0o022


def _discard(path: Path):
    """Remove a broken entry of any kind (file, link or directory)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sweep(root: Path):
    """Work directories and kept failed sources older than STALE_SECONDS."""
    limit = time.time() - STALE_SECONDS
    for p in root.iterdir():
        name = p.name
        leftover = (p.is_dir() and not p.is_symlink() and "." in name) or ".failed." in name
        try:
            if leftover and os.lstat(p).st_mtime < limit:
                _discard(p)
        except OSError:
            pass


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
    lib_ok, sidecar_ok = _safe_entry(lib), _safe_entry(sidecar)
    if lib_ok and sidecar_ok:
        try:
            if _digest(lib.read_bytes()) == sidecar.read_text().strip():
                stats["hits"] += 1
                return lib
        except (OSError, UnicodeDecodeError):
            pass
    for path in (lib, sidecar):         # broken, too open or half there: rebuilt; files
        if path.is_dir() and not path.is_symlink():   # are replaced atomically below
            _discard(path)
    stats["misses"] += 1
    try:
        _sweep(root)
        work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=root))
    except OSError as e:
        raise CacheError(f"cannot write to the cache directory {root}: {e.strerror or e}; "
                         f"make it writable (chmod u+w {root}) or set SYMNET_CACHE_DIR to "
                         "a directory you can write") from e
    try:
        _compile(work, root / key, source, suffix, compiler, flags, libs)
        return lib
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compile(work, stem, source, suffix, compiler, flags, libs):
    """Build in the work directory ``work``, then move the library and its checksum
    into place as ``<stem>.so`` and ``<stem>.sha256``."""
    src = work / f"module{suffix}"
    _write_private(src, source.encode())
    out = work / "module.so"
    # relative paths keep the temporary directory's name out of the binary
    cmd = [compiler, *flags, src.name, "-o", out.name, *libs]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if proc.returncode != 0:
        kept = stem.with_name(f"{stem.name}.failed{suffix}")
        os.replace(src, kept)
        raise CompileError(f"{compiler} failed on a generated module (source kept at {kept}):\n"
                           f"$ {' '.join(cmd)}\n{proc.stderr.strip()}")
    os.chmod(out, 0o700)
    data = out.read_bytes()
    tmp_sidecar = work / "sha256"
    _write_private(tmp_sidecar, _digest(data).encode())
    os.replace(out, stem.with_name(f"{stem.name}.so"))
    os.replace(tmp_sidecar, stem.with_name(f"{stem.name}.sha256"))
