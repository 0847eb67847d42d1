"""Data sharding for data-parallel training (Caffe's parallel data layers, their Skip()).

Caffe's DataLayer / HDF5DataLayer count every record they pass (``offset_``, across
epochs) and keep record ``offset_`` on rank ``offset_ % solver_count == solver_rank``;
the TEST phase is not sharded (only rank 0 tests). So rank r of N reads the places r,
r+N, r+2N, ... of the record stream one process reads. One process at batch N*B reads
places i*N*B .. (i+1)*N*B - 1 at iteration i; rank r at batch B reads, as its item k of
iteration i, place (i*B + k)*N + r = i*N*B + (k*N + r): item k*N + r of that batch. So
the union over the ranks of iteration i is exactly the one-process batch of N*B, and
interleaving the ranks' batches (item k of rank r at k*N + r) rebuilds it in order.

The records here carry their own number (label = record id, data = a function of it),
so the checks below compare what each rank reads with these closed forms and with the
batches of one process at batch N*B.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from symnet import data, fillers
from symnet.data import formats
from symnet.data.external import include_dir
from symnet.formats import prototxt

h5py = pytest.importorskip("h5py")
pytest.importorskip("lmdb")
Image = pytest.importorskip("PIL.Image")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLDS = [2, 3]


def layer(text):
    return prototxt.parse_net(textwrap.dedent(text)).layer[0]


def make(text, base_dir, world=None, phase="TRAIN", seed=None):
    return data.create(layer(text), phase, str(base_dir), seed=seed, world=world)


def read(src, iters):
    """``iters`` batches of ``src``: a list of lists of arrays (one per top)."""
    return [[a.copy() for a in src.next_batch()] for _ in range(iters)]


def interleave(rank_batches):
    """The ranks' batches of one iteration, item k of rank r at place k*N + r."""
    n = len(rank_batches)
    out = np.empty((n * len(rank_batches[0]),) + rank_batches[0].shape[1:],
                   rank_batches[0].dtype)
    for r, b in enumerate(rank_batches):
        out[r::n] = b
    return out


def check_shards(make_source, n, batch, iters, stream=None):
    """Rank r of n at ``batch`` reads the stream places r, r+n, ...; the ranks' batches
    of every iteration interleave into the batch of one process at n*batch.
    ``stream(place) -> label`` is the closed form of the labels (when known)."""
    single = read(make_source(n * batch, None), iters)
    ranks = []
    for r in range(n):
        src = make_source(batch, (r, n))
        ranks.append(read(src, iters))
        getattr(src, "close", lambda: None)()
    for i in range(iters):
        for top in range(len(single[i])):
            np.testing.assert_array_equal(
                interleave([ranks[r][i][top] for r in range(n)]), single[i][top],
                err_msg=f"iteration {i}, top {top}")
        if stream is not None:
            for r in range(n):
                places = (i * batch + np.arange(batch)) * n + r
                np.testing.assert_array_equal(ranks[r][i][1], [stream(p) for p in places],
                                              err_msg=f"rank {r} of {n}, iteration {i}")
    return single, ranks


# ----------------------------------------------------------------------------- the claim

@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_the_ranks_of_an_iteration_read_the_one_process_batch(n, batch):
    """The arithmetic of the module's docstring: at iteration i, rank r's item k is
    place (i*B + k)*N + r, the one-process batch's item k*N + r; the ranks' places
    are the one-process batch's places, each once."""
    for i in range(4):
        one_process = list(range(i * n * batch, (i + 1) * n * batch))
        per_rank = [[(i * batch + k) * n + r for k in range(batch)] for r in range(n)]
        assert sorted(p for places in per_rank for p in places) == one_process
        for r in range(n):
            for k in range(batch):
                assert per_rank[r][k] == one_process[k * n + r]


# ----------------------------------------------------------------------------- Data (LMDB)

def write_lmdb(path, count):
    ims = (np.arange(count, dtype=np.uint8)[:, None, None, None] * 3
           + np.arange(4, dtype=np.uint8).reshape(1, 1, 2, 2))
    with formats.LMDBWriter(path) as db:
        for i in range(count):
            db.put(f"{i:08d}", formats.array_to_datum(ims[i], i).SerializeToString())


def lmdb_layer(batch, extra=""):
    return f"""layer {{ name: "d" type: "Data" top: "data" top: "label"
                 data_param {{ source: "db" batch_size: {batch} backend: LMDB {extra} }} }}"""


@pytest.mark.parametrize("n", WORLDS)
def test_lmdb_ranks_read_every_nth_record(tmp_path, n):
    count = 7                      # not a multiple of n * batch: epochs end mid-batch
    write_lmdb(tmp_path / "db", count)
    single, ranks = check_shards(lambda b, w: make(lmdb_layer(b), tmp_path, w), n, 2, 6,
                                 stream=lambda p: p % count)
    x, y = single[0]
    np.testing.assert_array_equal(x[:, 0, 0, 0], (y * 3) % 256)      # data follows labels


@pytest.mark.parametrize("n", WORLDS)
def test_lmdb_rand_skip_is_the_same_start_on_every_rank(tmp_path, n):
    count = 11
    write_lmdb(tmp_path / "db", count)
    text = lmdb_layer(1, "rand_skip: 9")
    start = int(make(text, tmp_path).next_batch()[1][0])
    assert start > 0                  # the seeded skip moved the start
    check_shards(lambda b, w: make(lmdb_layer(b, "rand_skip: 9"), tmp_path, w), n, 3, 5,
                 stream=lambda p: (start + p) % count)


def test_lmdb_position_per_shard(tmp_path):
    write_lmdb(tmp_path / "db", 5)
    text = lmdb_layer(2)
    a = make(text, tmp_path, (1, 2))
    read(a, 2)
    st = a.state()
    assert st["shard"] == {"rank": 1, "size": 2}
    ahead = read(a, 3)
    b = make(text, tmp_path, (1, 2))
    b.set_state(st)
    for got, want in zip(read(b, 3), ahead):
        np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(ahead[0][1], [4, 1])      # places 9, 11 of 5 records
    for other, what in (((0, 2), "rank 0 of 2"), ((1, 3), "rank 1 of 3"),
                        (None, "one process")):
        c = make(text, tmp_path, other)
        with pytest.raises(data.DataError, match=f"read as rank 1 of 2, this source reads "
                                                 f"as {what}; an exact resume needs the "
                                                 "same number of processes"):
            c.set_state(st)
        c.close()
    single = make(text, tmp_path)
    assert "shard" not in single.state()          # one process: the form of before
    with pytest.raises(data.DataError, match="read as one process, this source reads as "
                                             "rank 1 of 2"):
        b.set_state(single.state())
    for s in (a, b, single):
        s.close()


# ----------------------------------------------------------------------------- HDF5Data

def write_hdf5(folder, sizes):
    """Files of ``sizes`` rows; row ids count across the files in list order."""
    names, start = [], 0
    for f, rows in enumerate(sizes):
        ids = np.arange(start, start + rows)
        with h5py.File(folder / f"part{f}.h5", "w") as h:
            h.create_dataset("data", data=np.stack([ids, -ids], 1).astype(np.float32))
            h.create_dataset("label", data=ids.astype(np.float32))
        names.append(f"part{f}.h5")
        start += rows
    (folder / "list.txt").write_text("\n".join(names) + "\n")
    return start


def hdf5_layer(batch, shuffle):
    return f"""layer {{ name: "h" type: "HDF5Data" top: "data" top: "label"
                 hdf5_data_param {{ source: "list.txt" batch_size: {batch}
                                    shuffle: {str(shuffle).lower()} }} }}"""


@pytest.mark.parametrize("n", WORLDS)
def test_hdf5_ranks_cross_files_and_epochs(tmp_path, n):
    count = write_hdf5(tmp_path, [5, 1, 4])     # a 1-row file some ranks step over
    check_shards(lambda b, w: make(hdf5_layer(b, False), tmp_path, w), n, 3, 6,
                 stream=lambda p: p % count)


@pytest.mark.parametrize("n", WORLDS)
def test_hdf5_shuffle_ranks_split_one_shuffled_stream(tmp_path, n):
    """The stream with shuffle: every epoch, the files in a permuted order and each
    file's rows permuted; drawn from the seed only, so alike on every rank."""
    sizes = [5, 1, 4]
    count = write_hdf5(tmp_path, sizes)
    seed = 1234
    one = make(hdf5_layer(1, True), tmp_path, seed=seed)
    stream = [int(one.next_batch()[1][0]) for _ in range(6 * count)]
    for e in range(3):
        assert sorted(stream[e * count:(e + 1) * count]) == list(range(count))
    assert stream[:count] != list(range(count))               # it is shuffled
    assert stream[:count] != stream[count:2 * count]          # anew every epoch
    check_shards(lambda b, w: make(hdf5_layer(b, True), tmp_path, w, seed=seed), n, 2, 7,
                 stream=lambda p: stream[p])


def test_hdf5_position_per_shard(tmp_path):
    write_hdf5(tmp_path, [5, 1, 4])
    text = hdf5_layer(2, True)
    a = make(text, tmp_path, (2, 3))
    read(a, 3)
    st = a.state()
    assert st["shard"] == {"rank": 2, "size": 3}
    ahead = read(a, 4)
    b = make(text, tmp_path, (2, 3))
    b.set_state(st)
    for got, want in zip(read(b, 4), ahead):
        np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(data.DataError, match="same number of processes"):
        make(text, tmp_path, (2, 4)).set_state(st)


# ----------------------------------------------------------------------------- ImageData

def write_image_list(folder, count):
    lines = []
    for i in range(count):
        Image.fromarray(np.full((2, 3), 20 * i, np.uint8), "L").save(folder / f"im{i}.png")
        lines.append(f"im{i}.png {i}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")


def image_layer(batch, params=""):
    return f"""layer {{ name: "img" type: "ImageData" top: "data" top: "label"
                 image_data_param {{ source: "list.txt" batch_size: {batch} is_color: false
                                     {params} }} }}"""


@pytest.mark.parametrize("n", WORLDS)
def test_image_data_ranks_read_every_nth_image(tmp_path, n):
    count = 7
    write_image_list(tmp_path, count)
    single, _ = check_shards(lambda b, w: make(image_layer(b), tmp_path, w), n, 2, 5,
                             stream=lambda p: p % count)
    np.testing.assert_array_equal(single[0][0][:, 0, 0, 0], single[0][1] * 20)


@pytest.mark.parametrize("n", WORLDS)
def test_image_data_shuffle_ranks_split_one_shuffled_stream(tmp_path, n):
    count = 7
    write_image_list(tmp_path, count)
    one = make(image_layer(1, "shuffle: true"), tmp_path, seed=5)
    stream = [int(one.next_batch()[1][0]) for _ in range(6 * count)]
    assert sorted(stream[:count]) == list(range(count)) and stream[:count] != \
        list(range(count))
    check_shards(lambda b, w: make(image_layer(b, "shuffle: true"), tmp_path, w, seed=5),
                 n, 2, 7, stream=lambda p: stream[p])


def test_image_data_position_per_shard(tmp_path):
    write_image_list(tmp_path, 7)
    text = image_layer(3, "shuffle: true")
    a = make(text, tmp_path, (0, 2))
    read(a, 2)
    st = a.state()
    ahead = read(a, 3)
    b = make(text, tmp_path, (0, 2))
    b.set_state(st)
    for got, want in zip(read(b, 3), ahead):
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(data.DataError, match="read as rank 0 of 2, this source reads as "
                                             "rank 1 of 2"):
        make(text, tmp_path, (1, 2)).set_state(st)


# ----------------------------------------------------------------------------- MemoryData

def memory_layer(batch):
    return f"""layer {{ name: "m" type: "MemoryData" top: "data" top: "label"
                 memory_data_param {{ batch_size: {batch} channels: 1 height: 1 width: 2 }} }}"""


@pytest.mark.parametrize("n", WORLDS)
def test_memory_data_ranks_share_the_same_arrays(tmp_path, n):
    count = 12
    x = np.stack([np.arange(count), 100 + np.arange(count)], 1).reshape(count, 1, 1, 2)

    def make_memory(b, w):
        src = make(memory_layer(b), tmp_path, w)
        src.set_arrays(x, np.arange(count))
        return src
    check_shards(make_memory, n, 2, 7, stream=lambda p: p % count)
    src = make_memory(2, (n - 1, n))
    read(src, 3)
    st = src.state()
    ahead = read(src, 2)
    other = make_memory(2, (n - 1, n))
    other.set_state(st)
    for got, want in zip(read(other, 2), ahead):
        np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(data.DataError, match="same number of processes"):
        make_memory(2, None).set_state(st)


# ----------------------------------------------------------------------------- DummyData

def test_dummy_data_generates_per_rank(tmp_path):
    """Nothing to share out: the random top of each rank comes from its own generator,
    the constant top is alike everywhere; one process draws as before."""
    text = """layer { name: "dd" type: "DummyData" top: "a" top: "b"
                      dummy_data_param { shape { dim: 2 dim: 3 }
                                         data_filler { type: "gaussian" }
                                         data_filler { type: "constant" value: 7 } } }"""
    alone = make(text, tmp_path, seed=3)
    first = alone.next_batch()[0]
    def stream(*key):          # the stream generator of symnet.data.base
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(3, spawn_key=key)))
    gaussian = fillers.get({"type": "gaussian"})
    np.testing.assert_array_equal(first, gaussian((2, 3), stream(0)))
    draws = []
    for r in range(2):
        src = make(text, tmp_path, (r, 2), seed=3)
        a, b = src.next_batch()
        np.testing.assert_array_equal(b, np.full((2, 3), 7, np.float32))
        np.testing.assert_array_equal(a, gaussian((2, 3), stream(0, r, 2)))
        draws.append(a)
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], first)


# ----------------------------------------------------------------------------- the world

def test_test_phase_is_not_sharded(tmp_path):
    write_lmdb(tmp_path / "db", 5)
    src = make(lmdb_layer(5), tmp_path, (1, 2), phase="TEST")
    np.testing.assert_array_equal(src.next_batch()[1], [0, 1, 2, 3, 4])
    assert "shard" not in src.state()
    src.close()


def test_set_world_is_the_default_of_create(tmp_path):
    write_lmdb(tmp_path / "db", 6)
    assert data.get_world() == data.World(0, 1)
    previous = data.set_world(1, 3)
    try:
        assert previous == data.World(0, 1) and data.get_world() == (1, 3)
        src = make(lmdb_layer(2), tmp_path)
        np.testing.assert_array_equal(src.next_batch()[1], [1, 4])
        src.close()
        alone = make(lmdb_layer(2), tmp_path, world=(0, 1))     # explicit wins
        np.testing.assert_array_equal(alone.next_batch()[1], [0, 1])
        alone.close()
    finally:
        data.set_world(*previous)
    for bad in [(2, 2), (-1, 2), (0, 0), ("a", 2), (1,)]:
        with pytest.raises(data.DataError, match="data world"):
            data.set_world(*bad) if len(bad) == 2 else data.World.of(bad)
    assert data.get_world() == (0, 1)


def test_a_factory_without_world_cannot_be_sharded(tmp_path):
    class Fixed:
        def top_shapes(self):
            return [(1,)]

        def next_batch(self):
            return [np.zeros(1, np.float32)]

    data.register("ShardTestFixed")(lambda lp, phase, base_dir: Fixed())
    try:
        text = 'layer { name: "f" type: "ShardTestFixed" top: "x" }'
        assert isinstance(make(text, tmp_path), Fixed)
        assert isinstance(make(text, tmp_path, (0, 2), phase="TEST"), Fixed)
        with pytest.raises(data.DataError, match="ShardTestFixed source cannot be sharded "
                                                 "across 2 processes"):
            make(text, tmp_path, (0, 2))
    finally:
        del data._FACTORIES["ShardTestFixed"]


# ----------------------------------------------------------------------------- ExternalData

SOURCES = '''
import numpy as np

class Counter:
    """Records n = rank, rank + world_size, ...: label n, data 10 n."""
    def __init__(self, param_str, rank=0, world_size=1):
        self.batch, self.n, self.step = int(param_str), rank, world_size
    def top_shapes(self):
        return [(self.batch, 1), (self.batch,)]
    def next_batch(self):
        ids = self.n + self.step * np.arange(self.batch)
        self.n += self.step * self.batch
        return [10.0 * ids[:, None], ids]
    def state(self):
        return {"n": self.n}
    def set_state(self, state):
        self.n = state["n"]

class Unaware:
    def __init__(self, param_str):
        self.batch = int(param_str)
    def top_shapes(self):
        return [(self.batch,)]
    def next_batch(self):
        return [np.zeros(self.batch)]
'''


def python_layer(cls, batch):
    return f"""layer {{ name: "ext" type: "ExternalData" top: "x" top: "y"
                 python_param {{ module: "shard_sources" layer: "{cls}"
                                 param_str: "{batch}" }} }}"""


@pytest.mark.parametrize("n", WORLDS)
def test_external_python_source_is_told_its_rank(tmp_path, n):
    (tmp_path / "shard_sources.py").write_text(SOURCES)
    check_shards(lambda b, w: make(python_layer("Counter", b), tmp_path, w), n, 3, 3,
                 stream=lambda p: p)
    src = make(python_layer("Counter", 3), tmp_path, (1, n))
    read(src, 2)
    st = src.state()
    assert st == {"type": "ExternalData", "shard": {"rank": 1, "size": n},
                  "state": {"n": 1 + 6 * n}}
    ahead = read(src, 1)
    other = make(python_layer("Counter", 3), tmp_path, (1, n))
    other.set_state(st)
    np.testing.assert_array_equal(read(other, 1)[0][1], ahead[0][1])
    with pytest.raises(data.DataError, match="same number of processes"):
        make(python_layer("Counter", 3), tmp_path, (1, n + 1)).set_state(st)
    alone = make(python_layer("Counter", 3), tmp_path)
    assert alone.state() == {"n": 0}                     # one process: as before
    unaware = python_layer("Unaware", 2).replace('top: "y"', "")
    assert make(unaware, tmp_path).top_shapes() == [(2,)]      # one process: fine
    with pytest.raises(data.DataError, match="cannot be sharded across .* takes no 'rank' "
                                             "and 'world_size'"):
        make(unaware, tmp_path, (0, n))


def compile_counter(out, *defines):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    src = os.path.join(ROOT, "examples", "external_data", "counter_source.c")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", *defines,
                    "-I", include_dir(), src, "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def counter_lib(tmp_path_factory):
    return compile_counter(tmp_path_factory.mktemp("clib") / "libcounter.so")


def lib_layer(lib, batch):
    return f"""layer {{ name: "counter" type: "ExternalData" top: "data" top: "label"
                 top: "noise" python_param {{ module: "lib:{lib}"
                                              param_str: "batch={batch} channels=1" }} }}"""


@pytest.mark.parametrize("n", WORLDS)
def test_external_c_source_is_told_its_rank(counter_lib, tmp_path, n):
    """counter_source.c: sample n has label n % 10 and data 1000 n + j."""
    batch, iters = 2, 3
    single = read(make(lib_layer(counter_lib, n * batch), tmp_path, seed=4), iters)
    ranks = [read(make(lib_layer(counter_lib, batch), tmp_path, (r, n), seed=4), iters)
             for r in range(n)]
    for i in range(iters):
        for top in (0, 1):        # the noise top draws from each rank's own generator
            np.testing.assert_array_equal(
                interleave([ranks[r][i][top] for r in range(n)]), single[i][top])
        for r in range(n):
            places = (i * batch + np.arange(batch)) * n + r
            np.testing.assert_array_equal(ranks[r][i][0][:, 0, 0, 0], 1000.0 * places)
            np.testing.assert_array_equal(ranks[r][i][1], places % 10)
    assert not np.array_equal(ranks[0][0][2], ranks[1][0][2])
    np.testing.assert_array_equal(ranks[0][0][2], single[0][2][:batch])   # rank 0: as alone

    src = make(lib_layer(counter_lib, batch), tmp_path, (n - 1, n), seed=4)
    read(src, 2)
    st = src.state()
    assert st["shard"] == {"rank": n - 1, "size": n}
    ahead = read(src, 2)
    other = make(lib_layer(counter_lib, batch), tmp_path, (n - 1, n), seed=4)
    other.set_state(st)
    for got, want in zip(read(other, 2), ahead):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    wrong = make(lib_layer(counter_lib, batch), tmp_path, (0, n), seed=4)
    with pytest.raises(data.DataError, match="same number of processes"):
        wrong.set_state(st)
    for s in (src, other, wrong):
        s.close()


def test_external_c_library_without_set_world(tmp_path):
    """A library of ABI version 1 (no symnet_data_set_world) loads in one process and is
    refused when sharded."""
    lib = compile_counter(tmp_path / "libold.so", "-Dsymnet_data_set_world=unexported")
    alone = make(lib_layer(lib, 2), tmp_path)
    np.testing.assert_array_equal(alone.next_batch()[1], [0, 1])
    alone.close()
    with pytest.raises(data.DataError, match="cannot be sharded across 2 processes: the "
                                             "shared library does not export "
                                             "symnet_data_set_world"):
        make(lib_layer(lib, 2), tmp_path, (1, 2))


# ----------------------------------------------------------------------------- through a Net

def test_a_net_built_under_set_world_reads_its_shard(tmp_path):
    """Net builds its data layers with ``data.create`` without ``world=``: the
    process's world (what a solver under MPI sets) shards them; TEST nets read all."""
    import symnet as sn
    write_hdf5(tmp_path, [4, 3])
    (tmp_path / "net.prototxt").write_text(hdf5_layer(2, False).replace(
        'name: "h"', 'name: "h" include { phase: TRAIN }') + hdf5_layer(2, False).replace(
        'name: "h"', 'name: "t" include { phase: TEST }') + """
        layer { name: "s" type: "Scale" bottom: "data" top: "s"
                param { lr_mult: 0 } scale_param { filler { value: 1 } } }""")
    previous = data.set_world(1, 2)
    try:
        train = sn.Net(str(tmp_path / "net.prototxt"), phase=sn.TRAIN)
        test = sn.Net(str(tmp_path / "net.prototxt"), phase=sn.TEST)
    finally:
        data.set_world(*previous)
    labels = []
    for _ in range(3):
        train.forward()
        labels.append(train.blobs["label"].data.copy())
    np.testing.assert_array_equal(labels, [[1, 3], [5, 0], [2, 4]])
    test.forward()
    np.testing.assert_array_equal(test.blobs["label"].data, [0, 1])
    train.close()
    test.close()
