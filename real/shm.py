"""Lock-free shared-memory ring buffer of dicts of numpy arrays, between the servo and policy processes.

One process creates the segment (``SharedRingBuffer.create``); any other process opens it by name alone
(``SharedRingBuffer.attach``), since the segment describes itself. Exactly one process writes with ``put``;
any number read with ``get_latest`` / ``get_last_k``. Nothing is pickled and nobody takes a lock, so a
reader can never stall the 500 Hz servo loop.

Layout (offsets in bytes; every region starts on a 64-byte boundary)::

    0    8-byte magic b"RPSHMRB1"
    8    uint64 write counter: how many records were ever put
    16   uint64 length of the JSON header that follows
    24   JSON header: {"capacity", "fields": [[key, shape, dtype.str], ...], "tracker"}
         uint64 seq_begin[capacity]
         uint64 seq_end[capacity]
         one array per field, shape (capacity, *shape), in spec order

Record ``i`` (0-based) lives in slot ``i % capacity``; its sequence number is ``i + 1`` (0 = never written).

Ordering guarantee (a seqlock per slot). The writer stores ``seq_begin[slot] = i + 1``, then the field
data, then ``seq_end[slot] = i + 1``, then ``counter = i + 1``. A reader loads the counter, then
``seq_end`` of the slots it wants, copies their data, then loads ``seq_begin``; it accepts the copy only if
both equal the expected sequence numbers, and otherwise retries with a fresh counter. So a copy is either
a complete record or detected as overwritten, never a silently torn mix. This assumes aligned 8-byte loads
and stores are atomic, stores become visible to other processes in program order and loads are not
reordered with other loads: true on x86-64 (TSO). Each step is a separate numpy call (an opaque C call), so
the compiler cannot reorder them either. Weakly ordered CPUs (ARM) would need fences Python does not offer.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]

_MAGIC = b"RPSHMRB1"
_COUNTER_OFFSET = 8
_HEADER_LEN_OFFSET = 16
_HEADER_OFFSET = 24
_ALIGN = 64  # cache line: keeps every uint64 aligned (atomic) and regions off each other's lines
# The slot the next put() writes is never part of a read, so one put landing mid-copy never forces a retry.
# Real headroom for slow readers comes from sizing the capacity with ring_capacity().
_READ_MARGIN = 1


def ring_capacity(put_hz: float, get_time_budget_s: float, get_max_k: int) -> int:
    """Slots needed so a reader taking up to ``get_max_k`` records within ``get_time_budget_s`` is not lapped.

    diffusion_policy's rule: the records put while a read is in flight, with 50 % headroom, plus the k being
    read, i.e. ``ceil(put_hz * get_time_budget_s * 1.5) + get_max_k``.
    """
    if put_hz <= 0 or get_time_budget_s <= 0 or get_max_k < 1:
        raise ValueError(f"ring_capacity needs put_hz > 0, get_time_budget_s > 0 and get_max_k >= 1, got "
                         f"{put_hz}, {get_time_budget_s}, {get_max_k}")
    # round() first so that 100 Hz * 1.1 s * 1.5 is 165 slots, not 166 from 165.00000000000003.
    return math.ceil(round(put_hz * get_time_budget_s * 1.5, 9)) + get_max_k


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _normalize_spec(spec: Mapping[str, tuple[int | Sequence[int], npt.DTypeLike]]) -> Spec:
    if not spec:
        raise ValueError("spec is empty: give at least one {key: (shape, dtype)}")
    out: Spec = {}
    for key, (shape, dtype) in spec.items():
        if not isinstance(key, str):
            raise ValueError(f"spec keys must be str (they are stored as JSON), got {key!r}")
        shape = (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"key {key!r}: negative dimension in shape {shape}")
        dtype = np.dtype(dtype)
        # dtype.str is what the header stores; it must rebuild the same dtype in the attaching process.
        if dtype.hasobject or np.dtype(dtype.str) != dtype:
            raise ValueError(f"key {key!r}: dtype {dtype} cannot be shared; use a plain numeric, bool or "
                             "fixed-size string dtype")
        out[key] = (shape, dtype)
    return out


def _plan(spec: Spec, capacity: int, header_nbytes: int) -> tuple[list[int], int]:
    """Offsets of seq_begin, seq_end and each field (spec order), and the total segment size."""
    sizes = [capacity * 8, capacity * 8]
    sizes += [capacity * math.prod(shape) * dtype.itemsize for shape, dtype in spec.values()]
    offsets, pos = [], _align(_HEADER_OFFSET + header_nbytes)
    for nbytes in sizes:
        offsets.append(pos)
        pos = _align(pos + nbytes)
    return offsets, pos


def _tracker_id() -> list[int]:
    """Identity (pipe device and inode) of this process's resource tracker.

    spawn, fork and forkserver children share their parent's tracker, so equal ids mean the creator's
    registration of the segment is already in that tracker.
    """
    st = os.fstat(resource_tracker.getfd())
    return [st.st_dev, st.st_ino]


class SharedRingBuffer:
    """Single-writer, many-reader ring of fixed-layout records in shared memory (see the module docstring).

    Build with ``create`` (the owner, who later calls ``unlink``) or ``attach``; every handle calls ``close``.
    """

    def __init__(self, shm: SharedMemory, spec: Spec, capacity: int, owner: bool) -> None:
        """Views over an already laid-out segment; use ``create`` or ``attach`` instead."""
        self._shm = shm
        self._spec = spec
        self._capacity = capacity
        self._owner = owner
        buf = shm.buf
        offsets, _ = _plan(spec, capacity, struct.unpack_from("<Q", buf, _HEADER_LEN_OFFSET)[0])
        self._counter = np.ndarray((1,), np.uint64, buf, _COUNTER_OFFSET)
        self._seq_begin = np.ndarray((capacity,), np.uint64, buf, offsets[0])
        self._seq_end = np.ndarray((capacity,), np.uint64, buf, offsets[1])
        self._fields = {key: np.ndarray((capacity, *shape), dtype, buf, offset)
                        for (key, (shape, dtype)), offset in zip(spec.items(), offsets[2:], strict=True)}

    @classmethod
    def create(cls, spec: Mapping[str, tuple[int | Sequence[int], npt.DTypeLike]], capacity: int,
               name: str | None = None) -> SharedRingBuffer:
        """Create and lay out a new segment (``name=None``: a fresh random name); the caller owns it."""
        spec = _normalize_spec(spec)
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        header = json.dumps({
            "capacity": capacity,
            "fields": [[key, list(shape), dtype.str] for key, (shape, dtype) in spec.items()],
            "tracker": _tracker_id(),
        }).encode()
        _, size = _plan(spec, capacity, len(header))
        shm = SharedMemory(name=name, create=True, size=size)  # zero-filled: counter 0, no slot written
        shm.buf[:len(_MAGIC)] = _MAGIC
        struct.pack_into("<Q", shm.buf, _HEADER_LEN_OFFSET, len(header))
        shm.buf[_HEADER_OFFSET:_HEADER_OFFSET + len(header)] = header
        return cls(shm, spec, capacity, owner=True)

    @classmethod
    def attach(cls, name: str) -> SharedRingBuffer:
        """Open an existing segment by name, reading spec and capacity from its header.

        Raises ``FileNotFoundError`` if no segment has that name (e.g. it was unlinked).
        """
        shm = SharedMemory(name=name)
        try:
            if bytes(shm.buf[:len(_MAGIC)]) != _MAGIC:
                raise ValueError(f"shared memory {name!r} is not a SharedRingBuffer (bad magic)")
            header_nbytes = struct.unpack_from("<Q", shm.buf, _HEADER_LEN_OFFSET)[0]
            header = json.loads(bytes(shm.buf[_HEADER_OFFSET:_HEADER_OFFSET + header_nbytes]))
        except BaseException:
            shm.close()
            raise
        # Before 3.13 (track=False) attaching registers the segment with this process's resource tracker,
        # which would unlink the owner's segment (with a "leaked" warning) when this process exits. Undo that,
        # but only in a tracker other than the creator's: there the name is the creator's own entry (the
        # tracker keeps a set), and removing it would make the owner's unlink() fail inside the tracker.
        if header["tracker"] != _tracker_id():
            resource_tracker.unregister(shm._name, "shared_memory")  # _name: the key the tracker uses
        spec = {key: (tuple(shape), np.dtype(dtype)) for key, shape, dtype in header["fields"]}
        return cls(shm, spec, header["capacity"], owner=False)

    @property
    def name(self) -> str:
        """The segment's name: all another process needs to ``attach``."""
        return self._shm.name

    @property
    def spec(self) -> Spec:
        """``{key: (shape, dtype)}`` of one record."""
        return dict(self._spec)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def count(self) -> int:
        """Records put so far (the write counter)."""
        return int(self._counter[0])

    def put(self, record: Mapping[str, npt.ArrayLike]) -> None:
        """Write the next record (single writer only). Values are cast to the field dtypes if safe."""
        if record.keys() != self._spec.keys():
            missing = [k for k in self._spec if k not in record]
            extra = [k for k in record if k not in self._spec]
            raise ValueError(f"put() keys must match the spec: missing {missing}, unexpected {extra}")
        values = {}
        # Validate everything before touching the slot, so a rejected record leaves the ring as it was.
        for key, (shape, dtype) in self._spec.items():
            value = np.asarray(record[key])
            if value.shape != shape:
                raise ValueError(f"key {key!r}: expected shape {shape} dtype {dtype}, got shape {value.shape}")
            if not np.can_cast(value.dtype, dtype, casting="safe"):
                raise ValueError(f"key {key!r}: expected shape {shape} dtype {dtype}, got dtype {value.dtype} "
                                 "(no safe cast)")
            values[key] = value
        n = self.count
        slot, seq = n % self._capacity, np.uint64(n + 1)
        self._seq_begin[slot] = seq
        for key, value in values.items():
            self._fields[key][slot] = value
        self._seq_end[slot] = seq
        self._counter[0] = seq

    def get_latest(self, retries: int = 10) -> tuple[dict[str, np.ndarray], int]:
        """Copy of the newest record and the write counter it belongs to (the record is the count-th put).

        Raises ``LookupError`` before the first put and ``TimeoutError`` if the slot was overwritten during
        the copy on ``retries + 1`` attempts in a row.
        """
        stacked, n = self._read(1, retries)
        return {key: value[0] for key, value in stacked.items()}, n

    def get_last_k(self, k: int, retries: int = 10) -> dict[str, np.ndarray]:
        """Copies of the last ``k`` records, stacked oldest to newest: ``{key: array of shape (k, *shape)}``.

        ``k`` may be at most ``capacity - 1`` (the slot being written next is never read). Raises
        ``LookupError`` if fewer than ``k`` records were ever put and ``TimeoutError`` if the writer lapped the
        copy on ``retries + 1`` attempts in a row (size the ring with ``ring_capacity``).
        """
        if not 1 <= k <= self._capacity - _READ_MARGIN:
            raise ValueError(f"k must be in [1, capacity - {_READ_MARGIN}] = [1, "
                             f"{self._capacity - _READ_MARGIN}], got {k}")
        return self._read(k, retries)[0]

    def _read(self, k: int, retries: int) -> tuple[dict[str, np.ndarray], int]:
        for _ in range(retries + 1):
            n = self.count
            if n < k:
                raise LookupError(f"asked for the last {k} record(s) but only {n} were ever put")
            seqs = np.arange(n - k + 1, n + 1, dtype=np.uint64)  # sequence numbers of records n-k .. n-1
            slots = (seqs - 1) % self._capacity
            # Fancy indexing copies: seq_end before the data, seq_begin after it (the seqlock read order).
            ended = self._seq_end[slots]
            out = {key: field[slots] for key, field in self._fields.items()}
            begun = self._seq_begin[slots]
            if np.array_equal(ended, seqs) and np.array_equal(begun, seqs):
                return out, n
        raise TimeoutError(f"last {k} record(s) were overwritten while being copied on {retries + 1} attempts; "
                           "the writer laps this reader, enlarge the capacity (see ring_capacity)")

    def close(self) -> None:
        """Drop this process's mapping (every handle, owner included, calls it once it is done)."""
        # numpy does not pin the mapping, so views kept past close() would read unmapped memory (a crash);
        # dropping them makes a closed handle fail with a TypeError instead.
        self._counter = self._seq_begin = self._seq_end = None
        self._fields = {}
        self._shm.close()

    def unlink(self) -> None:
        """Destroy the segment's name (the owner, once); mappings already open stay valid until closed."""
        if not self._owner:
            raise RuntimeError(f"only the creator of {self.name!r} may unlink it")
        self._shm.unlink()
