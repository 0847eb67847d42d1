"""Files opened defensively: a size cap for text files, LMDB and HDF5 files checked
against their headers before they are mapped, and a crashing ExternalData library
named on stderr.

Reading a damaged LMDB or calling a crashing library can kill the process, so those
cases run in a subprocess: a crash fails the test instead of ending pytest.
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from symnet import data
from symnet.data import formats
from symnet.errors import SymnetError
from symnet.formats import prototxt
from symnet.formats.prototxt import PrototxtError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NET = 'name: "tiny"\nlayer { name: "x" type: "Input" top: "x" ' \
      'input_param { shape { dim: 1 dim: 2 } } }\n'


def run_python(code, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("PYTHONFAULTHANDLER", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- text cap

def test_dev_zero_is_refused_fast():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    start = time.perf_counter()
    with pytest.raises(PrototxtError) as info:
        prototxt.parse_net("/dev/zero")
    elapsed = time.perf_counter() - start
    msg = str(info.value)
    assert msg.startswith("/dev/zero: ") and "character device" in msg
    assert str(prototxt.DEFAULT_MAX_TEXT_BYTES) in msg and "SYMNET_MAX_TEXT_BYTES" in msg
    assert info.value.filename == "/dev/zero"
    assert elapsed < 10, elapsed


def test_dev_zero_as_a_caffemodel_gets_the_text_limit(monkeypatch):
    """A device has no size: even as a .caffemodel (limit INT_MAX for files) it is
    read up to the text limit only."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", "1M")
    with pytest.raises(PrototxtError, match=r"^/dev/zero: the character device gives more "
                                            r"than the limit of 1048576 bytes.*"
                                            r"SYMNET_MAX_TEXT_BYTES"):
        prototxt.read_net_binary("/dev/zero")


def test_text_cap_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    size = len(NET.encode())
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", str(size))
    assert prototxt.max_text_bytes() == size
    assert prototxt.parse_net(str(path)).name == "tiny"             # exactly at the cap
    path.write_text(NET + "#")                                       # one byte over
    with pytest.raises(PrototxtError) as info:
        prototxt.parse_net(str(path))
    msg = str(info.value)
    assert str(path) in msg and f"limit of {size} bytes" in msg and f"{size + 1} bytes" in msg
    assert "set SYMNET_MAX_TEXT_BYTES" in msg
    with pytest.raises(PrototxtError, match=f"limit of {size} bytes"):
        prototxt.parse_solver(str(path))
    # suffixes, and a wrong value named
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", "2K")
    assert prototxt.max_text_bytes() == 2048
    assert prototxt.parse_net(str(path)).name == "tiny"
    for bad in ("0", "-5", "lots", "1.5M"):
        monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", bad)
        with pytest.raises(PrototxtError, match="SYMNET_MAX_TEXT_BYTES="):
            prototxt.parse_net(str(path))
    monkeypatch.delenv("SYMNET_MAX_TEXT_BYTES")
    assert prototxt.max_text_bytes() == 64 << 20


def test_text_cap_reads_at_most_cap_plus_one_bytes(tmp_path, monkeypatch):
    """A pipe that never ends: the reader stops after cap + 1 bytes."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "endless.prototxt"
    os.mkfifo(fifo)
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", "4096")
    written = [0]

    def writer():
        try:
            with open(fifo, "wb") as f:
                block = b"# comment\n" * 100
                for _ in range(100000):
                    f.write(block)
                    written[0] += len(block)
        except (BrokenPipeError, OSError):
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    with pytest.raises(PrototxtError) as info:
        prototxt.parse_net(str(fifo))
    t.join(30)
    assert not t.is_alive()
    msg = str(info.value)
    assert "pipe (FIFO)" in msg and "limit of 4096 bytes" in msg and str(fifo) in msg
    assert written[0] < 1 << 20       # the writer was cut off, not drained


def test_binaryproto_and_list_files_are_capped(tmp_path, monkeypatch):
    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    prototxt.write_blobproto(mean, tmp_path / "mean.binaryproto")
    size = os.path.getsize(tmp_path / "mean.binaryproto")
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", str(size))
    np.testing.assert_array_equal(prototxt.read_blobproto(tmp_path / "mean.binaryproto"),
                                  mean)
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", str(size - 1))
    with pytest.raises(PrototxtError, match=f"limit of {size - 1} bytes"):
        prototxt.read_blobproto(tmp_path / "mean.binaryproto")
    # a data layer's list file: a DataError (a SymnetError) naming the file and limit
    lines = "".join(f"img{i}.png {i}\n" for i in range(50))
    (tmp_path / "list.txt").write_text(lines)
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", "100")
    with pytest.raises(data.DataError) as info:
        data.builtin.read_image_list(str(tmp_path / "list.txt"))
    assert "list.txt" in str(info.value) and "limit of 100 bytes" in str(info.value)
    monkeypatch.delenv("SYMNET_MAX_TEXT_BYTES")
    assert len(data.builtin.read_image_list(str(tmp_path / "list.txt"))) == 50
    (tmp_path / "bad.txt").write_bytes(b"a.png 1\n\xff\xfe.png 2\n")
    with pytest.raises(data.DataError, match=r"line 2: found the byte 0xff"):
        data.builtin.read_image_list(str(tmp_path / "bad.txt"))


def test_folder_given_as_a_file(tmp_path):
    with pytest.raises(PrototxtError, match="is a folder"):
        prototxt.read_limited(tmp_path, what="prototxt file")


# ----------------------------------------------------------------------------- LMDB

try:
    import lmdb
except ImportError:          # the data extra is not installed
    lmdb = None
needs_lmdb = pytest.mark.skipif(lmdb is None, reason="needs lmdb (symnet[data])")


def write_lmdb(path, n=200):
    rng = np.random.default_rng(0)
    with formats.LMDBWriter(path) as db:
        for i in range(n):
            im = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
            db.put(f"{i:08d}", formats.array_to_datum(im, i).SerializeToString())


READ_ALL = """
import sys
from symnet import data
from symnet.formats import prototxt
net = prototxt.parse_net('''layer {{ name: "d" type: "Data" top: "data" top: "label"
    data_param {{ source: "{db}" batch_size: 10 backend: LMDB }} }}''')
try:
    src = data.create(net.layer[0], "TRAIN", ".")
    for _ in range(25):
        src.next_batch()
    src.close()
except data.DataError as e:
    print("DataError:", e)
    sys.exit(3)
print("read all")
"""


@pytest.fixture(scope="module")
def good_lmdb(tmp_path_factory):
    path = tmp_path_factory.mktemp("lmdb") / "db"
    write_lmdb(path)
    return path


@needs_lmdb
def test_lmdb_header_of_a_good_database(good_lmdb):
    meta = formats.check_lmdb_file(good_lmdb / "data.mdb")
    size = os.path.getsize(good_lmdb / "data.mdb")
    assert meta["page_size"] == lmdb.open(str(good_lmdb), readonly=True,
                                          lock=False).stat()["psize"]
    assert (meta["last_page"] + 1) * meta["page_size"] == size == meta["size"]
    result = run_python(READ_ALL.format(db=good_lmdb))
    assert result.returncode == 0 and "read all" in result.stdout, result.stderr


def truncated_cases(size, psize):
    return [0, 100, psize, 2 * psize - 1, 2 * psize, 3 * psize, size // 2,
            size - psize, size - 1]


@needs_lmdb
def test_truncated_lmdb_is_a_clear_error_not_a_crash(good_lmdb, tmp_path):
    size = os.path.getsize(good_lmdb / "data.mdb")
    psize = formats.check_lmdb_file(good_lmdb / "data.mdb")["page_size"]
    assert size >= 10 * psize
    for cut in truncated_cases(size, psize):
        db = tmp_path / f"cut{cut}"
        shutil.copytree(good_lmdb, db)
        os.truncate(db / "data.mdb", cut)
        result = run_python(READ_ALL.format(db=db))
        assert result.returncode == 3, (cut, result.returncode, result.stderr[-2000:])
        out = result.stdout
        assert f"'{db / 'data.mdb'}'" in out and "truncated" in out, (cut, out)
        assert f"holds {cut} bytes" in out, (cut, out)
        if cut >= 2 * psize:
            assert f"needs {size} bytes" in out, (cut, out)


@needs_lmdb
def test_damaged_lmdb_headers(good_lmdb, tmp_path):
    good = (good_lmdb / "data.mdb").read_bytes()
    psize = formats.check_lmdb_file(good_lmdb / "data.mdb")["page_size"]

    def damaged(name, offset, raw):
        path = tmp_path / name
        buf = bytearray(good)
        buf[offset:offset + len(raw)] = raw
        path.write_bytes(bytes(buf))
        with pytest.raises(data.DataError) as info:
            formats.check_lmdb_file(path)
        assert str(path) in str(info.value)
        return str(info.value)

    order = sys.byteorder
    assert "magic number 0x12345678; expected 0xBEEFC0DE" in damaged(
        "magic.mdb", 16, (0x12345678).to_bytes(4, order))
    assert "meta page 1" in damaged("magic1.mdb", psize + 16, b"\0\0\0\0")
    assert "format version 7; expected version 1" in damaged(
        "version.mdb", 16 + 4, (7).to_bytes(4, order))
    assert "page size of 0 bytes" in damaged("psize0.mdb", 40, b"\0\0\0\0")
    assert "page size of 3000 bytes" in damaged("psize.mdb", 40,
                                                (3000).to_bytes(4, order))
    assert "other byte order" in damaged("order.mdb", 16,
                                         (0xBEEFC0DE).to_bytes(4, "big" if order ==
                                                               "little" else "little"))
    assert "expected a meta page" in damaged("flags.mdb", 10, b"\0\0")
    # a last page beyond the end of the file in the newer meta page
    last = int.from_bytes(good[psize + 136:psize + 144], order)
    msg = damaged("last.mdb", psize + 136, (last + 1000).to_bytes(8, order))
    assert f"up to number {last + 1000}" in msg and f"needs {(last + 1001) * psize}" in msg


@needs_lmdb
def test_damaged_lmdb_single_file_layout(good_lmdb, tmp_path):
    """An LMDB given as a single file (subdir=False) is checked the same way."""
    path = tmp_path / "single.mdb"
    path.write_bytes((good_lmdb / "data.mdb").read_bytes()[:5000])
    with pytest.raises(data.DataError, match="single.mdb' is truncated"):
        formats.acquire_lmdb(path)


# ----------------------------------------------------------------------------- HDF5

try:
    import h5py
except ImportError:
    h5py = None


@pytest.mark.skipif(h5py is None, reason="needs h5py (symnet[data])")
@pytest.mark.parametrize("kwargs", [{}, {"userblock_size": 512}, {"libver": "latest"}],
                         ids=["v0", "userblock", "v3"])
def test_truncated_hdf5_is_a_clear_error(tmp_path, kwargs):
    good = tmp_path / "good.h5"
    with h5py.File(good, "w", **kwargs) as f:
        f["data"] = np.arange(60, dtype=np.float32).reshape(20, 3)
        f["label"] = np.arange(20, dtype=np.float32)
    info = formats.check_hdf5_file(good)
    size = os.path.getsize(good)
    assert info["eof"] == size and info["superblock"] == kwargs.get("userblock_size", 0)
    raw = good.read_bytes()
    for cut in (0, 7, info["superblock"] + 20, size // 2, size - 1):
        path = tmp_path / f"cut{cut}.h5"
        path.write_bytes(raw[:cut])
        (tmp_path / "list.txt").write_text(f"{path}\n")
        text = f"""layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label"
                    hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 4 }} }}"""
        with pytest.raises(data.DataError) as err:
            data.create(prototxt.parse_net(text).layer[0], "TRAIN", str(tmp_path))
        msg = str(err.value)
        assert msg.startswith("HDF5Data 'h5': ") and str(path) in msg, msg
        assert ("truncated" in msg) or ("not an HDF5 file" in msg), msg
    (tmp_path / "list.txt").write_text(f"{good}\n")
    text = f"""layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label"
                hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 4 }} }}"""
    src = data.create(prototxt.parse_net(text).layer[0], "TRAIN", str(tmp_path))
    np.testing.assert_array_equal(src.next_batch()[1], [0, 1, 2, 3])


# ----------------------------------------------------------------------------- ExternalData

CRASH_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include "symnet_data.h"

struct source { int batch; };

void *symnet_data_create(const char *param_str, const char *phase, uint64_t seed,
                         char *error, size_t error_size) {
    (void)param_str; (void)phase; (void)seed; (void)error; (void)error_size;
    struct source *s = malloc(sizeof *s);
    s->batch = 2;
    return s;
}
int symnet_data_num_tops(void *source) { (void)source; return 1; }
int symnet_data_top_shape(void *source, int top, int64_t *dims, int max_dims) {
    (void)top; (void)max_dims;
    dims[0] = ((struct source *)source)->batch;
    return 1;
}
int symnet_data_next(void *source, float *const *tops) {
    (void)source; (void)tops;
    volatile int *volatile nowhere = NULL;
    return *nowhere;
}
const char *symnet_data_error(void *source) { (void)source; return ""; }
void symnet_data_destroy(void *source) { free(source); }
"""

CRASH_RUN = """
from symnet import data
from symnet.formats import prototxt
net = prototxt.parse_net('''layer {{ name: "crashing_source" type: "ExternalData"
    top: "x" python_param {{ module: "lib:{lib}" }} }}''')
src = data.create(net.layer[0], "TRAIN", ".")
print("created", src.top_shapes(), flush=True)
{call}
print("survived")
"""


@pytest.fixture(scope="module")
def crash_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    folder = tmp_path_factory.mktemp("crashlib")
    (folder / "crash_source.c").write_text(CRASH_SOURCE)
    out = folder / "libcrash_source.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O0", "-Wall", "-Werror", "-I",
                    data.external.include_dir(), str(folder / "crash_source.c"), "-o",
                    str(out)], check=True)
    return out


@pytest.mark.parametrize("call", [
    "src.next_batch()",
    "pf = data.Prefetcher(src, 2, name='crashing_source (ExternalData)')\npf.get()",
], ids=["main-thread", "prefetch-thread"])
def test_crashing_library_is_named_on_stderr(crash_lib, call):
    result = run_python(CRASH_RUN.format(lib=crash_lib, call=call))
    assert "created [(2,)]" in result.stdout, result.stderr
    assert "survived" not in result.stdout
    assert result.returncode == -signal.SIGSEGV, (result.returncode, result.stderr)
    err = result.stderr
    assert "Segmentation fault" in err, err
    marker = f"<ExternalData layer 'crashing_source': library {crash_lib}>"
    assert marker in err, err
    line = next(ln for ln in err.splitlines() if marker in ln)
    assert line.rstrip().endswith("in symnet_data_next"), line
    # the crashing thread's stack is the one that names the library's function
    current = err[err.index("Current thread"):]
    assert marker in current.split("\n\n")[0], err


def test_library_errors_name_the_layer_and_library(crash_lib, tmp_path):
    text = f"""layer {{ name: "ext" type: "ExternalData" top: "x"
                python_param {{ module: "lib:{crash_lib}" layer: "other" }} }}"""
    with pytest.raises(data.DataError) as info:
        data.create(prototxt.parse_net(text).layer[0], "TRAIN", str(tmp_path))
    msg = str(info.value)
    assert f"ExternalData 'ext' (library '{crash_lib}')" in msg
    assert "does not export other_create" in msg
    assert isinstance(info.value, SymnetError)
