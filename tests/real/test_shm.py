"""SharedRingBuffer: layout round trips, ring order and wrap-around, validation, cross-process use, cleanup."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest
from robopol.real.shm import SharedRingBuffer, ring_capacity

SPEC = {
    "q": ((7,), np.float32),
    "stamp": ((), np.float64),
    "image": ((2, 3, 4), np.uint8),
    "ids": (3, np.int64),
    "flags": ((2,), np.bool_),
}
# Every field of record i equals i, so any mix of two records inside one read is visible.
TORN_SPEC = {"a": ((512,), np.float64), "b": ((16, 16), np.int64), "c": ((64,), np.float32), "d": ((), np.uint32)}


def record(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {
        "q": rng.standard_normal(7).astype(np.float32),
        "stamp": np.float64(i * 0.002),
        "image": rng.integers(0, 256, (2, 3, 4), dtype=np.uint8),
        "ids": np.arange(3, dtype=np.int64) + i,
        "flags": np.array([i % 2 == 0, True]),
    }


def uniform_record(i: int) -> dict[str, np.ndarray]:
    return {key: np.full(shape, i, dtype) for key, (shape, dtype) in TORN_SPEC.items()}


def assert_uniform(rows: dict[str, np.ndarray]) -> np.ndarray:
    """Each row (record) has one value in every field; return those values."""
    values = rows["d"].astype(np.int64)
    for key, field in rows.items():
        flat = field.reshape(len(values), -1)
        assert (flat == values[:, None]).all(), f"torn record in field {key!r}"
    return values


def assert_record_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert np.asarray(got[key]).dtype == SPEC[key][1]
        np.testing.assert_array_equal(got[key], value)


class Rings:
    """Creates and attaches rings for one test and closes (and unlinks) every one of them afterwards."""

    def __init__(self) -> None:
        self.handles: list[SharedRingBuffer] = []

    def create(self, spec=SPEC, capacity: int = 8) -> SharedRingBuffer:
        self.handles.append(SharedRingBuffer.create(spec, capacity))
        return self.handles[-1]

    def attach(self, name: str) -> SharedRingBuffer:
        self.handles.append(SharedRingBuffer.attach(name))
        return self.handles[-1]

    def cleanup(self) -> None:
        for ring in self.handles:
            ring.close()
        for ring in self.handles:
            if ring._owner:
                try:
                    ring.unlink()
                except FileNotFoundError:  # the test unlinked it already
                    pass


@pytest.fixture
def rings() -> Iterator[Rings]:
    made = Rings()
    yield made
    made.cleanup()


# Spawned children import these by module path, so they live at module level.
def child_read(name: str, conn) -> None:
    ring = SharedRingBuffer.attach(name)
    try:
        latest, count = ring.get_latest()
        conn.send((ring.capacity, ring.spec, latest, count, ring.get_last_k(3)))
    finally:
        ring.close()


def child_write(name: str, n: int) -> None:
    ring = SharedRingBuffer.attach(name)
    try:
        for i in range(n):
            ring.put(uniform_record(i))
    finally:
        ring.close()


def test_round_trip_dtypes_and_shapes(rings):
    ring = rings.create()
    assert ring.count == 0 and ring.capacity == 8
    assert ring.spec == {"q": ((7,), np.dtype("f4")), "stamp": ((), np.dtype("f8")),
                         "image": ((2, 3, 4), np.dtype("u1")), "ids": ((3,), np.dtype("i8")),
                         "flags": ((2,), np.dtype("?"))}
    rec = record(0)
    ring.put(rec)
    rec["q"][:] = 99  # put copied it
    got, count = ring.get_latest()
    assert count == ring.count == 1
    assert_record_equal(got, record(0))
    got["image"][:] = 7  # reads are copies too
    assert_record_equal(ring.get_latest()[0], record(0))


def test_put_casts_only_when_safe(rings):
    ring = rings.create({"x": ((3,), np.float64)}, 4)
    ring.put({"x": np.array([1, 2, 3], np.int32)})
    ring.put({"x": [0.5, 1.5, 2.5]})
    np.testing.assert_array_equal(ring.get_last_k(2)["x"], [[1, 2, 3], [0.5, 1.5, 2.5]])


def test_get_last_k_is_oldest_to_newest(rings):
    ring = rings.create(capacity=8)
    for i in range(5):
        ring.put(record(i))
    last = ring.get_last_k(3)
    assert last["image"].shape == (3, 2, 3, 4) and last["stamp"].shape == (3,)
    np.testing.assert_array_equal(last["ids"][:, 0], [2, 3, 4])
    for row, i in enumerate([2, 3, 4]):
        assert_record_equal({key: value[row] for key, value in last.items()}, record(i))


def test_wraps_around_after_more_than_capacity_puts(rings):
    ring = rings.create(capacity=5)
    for i in range(13):
        ring.put(record(i))
    assert ring.count == 13
    np.testing.assert_array_equal(ring.get_last_k(4)["ids"][:, 0], [9, 10, 11, 12])
    latest, count = ring.get_latest()
    assert count == 13
    assert_record_equal(latest, record(12))


def test_put_validation_names_key_and_expectation(rings):
    ring = rings.create()
    rec = record(0)
    with pytest.raises(ValueError, match=r"missing \['ids'\], unexpected \['extra'\]"):
        ring.put({**{k: v for k, v in rec.items() if k != "ids"}, "extra": 1})
    with pytest.raises(ValueError, match=r"key 'q': expected shape \(7,\) dtype float32, got shape \(6,\)"):
        ring.put({**rec, "q": np.zeros(6, np.float32)})
    with pytest.raises(ValueError, match=r"key 'q': expected shape \(7,\) dtype float32, got dtype float64 \(no safe"):
        ring.put({**rec, "q": np.zeros(7)})
    with pytest.raises(ValueError, match=r"key 'stamp': expected shape \(\) dtype float64, got shape \(1,\)"):
        ring.put({**rec, "stamp": [0.0]})
    assert ring.count == 0  # rejected records leave no trace


def test_read_errors(rings):
    ring = rings.create(capacity=4)
    with pytest.raises(LookupError, match="only 0 were ever put"):
        ring.get_latest()
    ring.put(record(0))
    ring.put(record(1))
    with pytest.raises(LookupError, match="last 3 record"):
        ring.get_last_k(3)
    for k in (0, 4):
        with pytest.raises(ValueError, match=r"k must be in \[1, capacity - 1\] = \[1, 3\]"):
            ring.get_last_k(k)


def test_create_rejects_bad_specs():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        SharedRingBuffer.create(SPEC, 0)
    with pytest.raises(ValueError, match="spec is empty"):
        SharedRingBuffer.create({}, 4)
    with pytest.raises(ValueError, match="key 'o': dtype object cannot be shared"):
        SharedRingBuffer.create({"o": ((1,), object)}, 4)
    with pytest.raises(ValueError, match="key 's': dtype .* cannot be shared"):
        SharedRingBuffer.create({"s": ((1,), [("a", "f4"), ("b", "i4")])}, 4)


def test_half_written_slot_is_never_returned(rings):
    ring = rings.create({"x": ((2,), np.float64)}, 4)
    ring.put({"x": np.zeros(2)})
    ring.put({"x": np.ones(2)})
    ring._seq_begin[1] += 4  # a writer started overwriting record 1's slot and has not finished
    with pytest.raises(TimeoutError, match="overwritten while being copied on 3 attempts"):
        ring.get_latest(retries=2)
    with pytest.raises(TimeoutError):
        ring.get_last_k(2)
    ring.put({"x": np.full(2, 2.0)})  # the next slot is unaffected
    np.testing.assert_array_equal(ring.get_latest()[0]["x"], [2.0, 2.0])
    with pytest.raises(TimeoutError):
        ring.get_last_k(2)


def test_ring_capacity_matches_hand_computed_values():
    assert ring_capacity(500, 0.01, 8) == 8 + 8  # ceil(7.5) + 8
    assert ring_capacity(10, 0.2, 2) == 3 + 2  # 3.0 exactly
    assert ring_capacity(30, 0.1, 1) == 5 + 1  # ceil(4.5) + 1
    assert ring_capacity(100, 1.1, 4) == 165 + 4  # 165.00000000000003 in floats
    for bad in [(0, 0.1, 1), (500, 0.0, 1), (500, 0.1, 0)]:
        with pytest.raises(ValueError, match="ring_capacity needs"):
            ring_capacity(*bad)


def test_ring_capacity_sized_ring_serves_max_k(rings):
    ring = rings.create({"x": ((), np.int64)}, ring_capacity(500, 0.001, 8))  # ceil(0.75) + 8 = 9 slots
    for i in range(8):
        ring.put({"x": i})
    np.testing.assert_array_equal(ring.get_last_k(8)["x"], np.arange(8))


def test_attach_learns_layout_from_header(rings):
    ring = rings.create(capacity=6)
    for i in range(3):
        ring.put(record(i))
    other = rings.attach(ring.name)
    assert other.spec == ring.spec and other.capacity == 6 and other.count == 3
    assert_record_equal(other.get_latest()[0], record(2))
    ring.put(record(3))  # writes are visible through the other mapping
    assert other.count == 4
    with pytest.raises(RuntimeError, match="only the creator"):
        other.unlink()


def test_attach_rejects_foreign_segment():
    shm = SharedMemory(create=True, size=64)
    try:
        with pytest.raises(ValueError, match="not a SharedRingBuffer"):
            SharedRingBuffer.attach(shm.name)
    finally:
        shm.close()
        shm.unlink()


def test_unlink_frees_the_name(rings):
    ring = rings.create()
    name = ring.name
    ring.close()
    ring.unlink()
    with pytest.raises(FileNotFoundError):
        SharedRingBuffer.attach(name)


def test_spawned_child_reads_what_parent_wrote(rings):
    ring = rings.create(capacity=8)
    for i in range(10):
        ring.put(record(i))
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=child_read, args=(ring.name, child_conn))
    proc.start()
    capacity, spec, latest, count, last3 = parent_conn.recv()
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert capacity == 8 and spec == ring.spec and count == 10
    assert_record_equal(latest, record(9))
    np.testing.assert_array_equal(last3["ids"][:, 0], [7, 8, 9])


def test_spawned_writer_never_shows_parent_a_torn_record(rings):
    n = 20_000
    ring = rings.create(TORN_SPEC, capacity=8)  # small, so the writer laps readers and forces retries
    proc = mp.get_context("spawn").Process(target=child_write, args=(ring.name, n))
    proc.start()
    reads = timeouts = 0
    deadline = time.monotonic() + 30
    while ring.count < n and time.monotonic() < deadline:
        try:
            latest, count = ring.get_latest(retries=50)
            assert assert_uniform({k: np.asarray(v)[None] for k, v in latest.items()})[0] == count - 1
            values = assert_uniform(ring.get_last_k(7, retries=50))
            assert (np.diff(values) == 1).all()  # consecutive, oldest to newest
            reads += 1
        except LookupError:  # the child has not put 7 records yet
            pass
        except TimeoutError:  # lapped every attempt: allowed, as long as it is never torn
            timeouts += 1
    proc.join(timeout=30)
    assert proc.exitcode == 0 and ring.count == n
    assert reads > 0, f"no read overlapped the writer ({timeouts} timeouts)"
    assert_uniform(ring.get_last_k(7))


def run_script(tmp_path, source: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)


def test_unrelated_attacher_leaves_segment_alive_and_tracker_quiet(rings, tmp_path):
    ring = rings.create({"x": ((), np.int64)}, 4)
    ring.put({"x": 41})
    proc = run_script(tmp_path, f"""
        from robopol.real.shm import SharedRingBuffer
        ring = SharedRingBuffer.attach({ring.name!r})
        ring.put({{"x": int(ring.get_latest()[0]["x"]) + 1}})
        ring.close()
    """)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    # Its resource tracker (a separate one) must not have unlinked our segment when it exited.
    assert rings.attach(ring.name).get_latest()[0]["x"] == 42


def test_owner_with_spawned_attacher_exits_quietly(tmp_path):
    proc = run_script(tmp_path, """
        import multiprocessing as mp
        from robopol.real.shm import SharedRingBuffer

        def child(name):
            ring = SharedRingBuffer.attach(name)
            ring.put({"x": 1})
            ring.close()

        if __name__ == "__main__":
            ring = SharedRingBuffer.create({"x": ((), "i8")}, 4)
            p = mp.get_context("spawn").Process(target=child, args=(ring.name,))
            p.start()
            p.join()
            same_process = SharedRingBuffer.attach(ring.name)
            print(p.exitcode, same_process.get_latest()[1])
            same_process.close()
            ring.close()
            ring.unlink()
    """)
    # A KeyError from the tracker (double unregister) or a "leaked" warning would land on stderr.
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.split() == ["0", "1"]
