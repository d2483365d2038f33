"""FileStorage's on-disk formats: safe names, journal frames, snapshots, quarantine.

Blocking helpers only; :mod:`trio_jobqueue.storage.file` calls them from worker threads.

Journal frame (format 2)::

    b"TK" | u32 payload length | u32 CRC-32 of the payload | payload
    payload = u32 JSON length | JSON (UTF-8) | blobs

The JSON is one journal entry (see :mod:`._state`); ``blobs`` are the raw bytes of the
payloads, results and errors the entry refers to (by index, with their lengths in the
entry), so binary data is written as is, never as base64. Format 1 frames (``b"TJ"``,
the payload being the JSON alone) are still read.

Snapshot file (format 2; format 1 is ``b"TJQF1 "`` followed by the JSON alone)::

    b"TJQF2 " gen(20 digits) b" " crc32(8 hex) b" " length(12 digits) b"\\n" | payload

with ``payload`` laid out as in a frame. The fixed-size header lets a process learn a
snapshot's generation by reading 48 bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

FILE_MODE = 0o600
DIR_MODE = 0o700

FRAME_MAGIC = b"TK"
"""Frames of format 2 (JSON + raw blobs)."""
FRAME_MAGIC_V1 = b"TJ"
"""Frames of format 1 (JSON only, bytes as base64), written by earlier versions."""
FRAME_HEADER = struct.Struct(">2sII")
JSON_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 30

SNAP_MAGIC = b"TJQF2 "
SNAP_MAGIC_V1 = b"TJQF1 "
SNAP_HEADER_LEN = len(SNAP_MAGIC) + 20 + 1 + 8 + 1 + 12 + 1
_SNAP_HEADER_RE = re.compile(rb"TJQF([12]) (\d{20}) ([0-9a-f]{8}) (\d{12})\n")

SNAPSHOT = "snapshot"
SNAPSHOT_PREV = "snapshot.prev"
SNAPSHOT_TMP = "snapshot.tmp"
"""Written by format 1 (compaction under the lock); removed when found."""
LOCK = "lock"
NAME = "name"
JOURNAL_PREFIX = "journal."
QUARANTINE = "quarantine"
NAMESPACES = "ns"
_BUILD_RE = re.compile(r"snapshot\.(\d{1,20})\.tmp")

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_name(text: str, *, prefix_len: int = 40) -> str:
    """A file name for any text: a readable escaped prefix plus a hash of the whole text.

    Only ``[A-Za-z0-9_-]`` survive in the prefix, so the name never contains ``/``, ``.``
    or NUL and can never be ``.``/``..``; its length is bounded (at most 81 bytes) whatever
    the text's length, and the hash keeps distinct texts distinct.
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    prefix = _SAFE.sub("_", text[:prefix_len])
    return f"{prefix}-{digest}"


def journal_name(gen: int) -> str:
    return f"{JOURNAL_PREFIX}{gen}"


def parse_journal_name(name: str) -> int | None:
    if not name.startswith(JOURNAL_PREFIX):
        return None
    tail = name[len(JOURNAL_PREFIX) :]
    return int(tail) if tail.isdigit() and tail.isascii() else None


# -- frames ----------------------------------------------------------------------------


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode
"""``json.dumps`` with our settings, built once; entries are trees (no cycle to check)."""


def _payload(entry: dict[str, Any], blobs: Sequence[bytes]) -> list[bytes]:
    text = _ENCODE(entry).encode("utf-8")
    return [JSON_LEN.pack(len(text)), text, *blobs]


def _crc(parts: Sequence[bytes]) -> tuple[int, int]:
    crc = 0
    size = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
        size += len(part)
    return crc, size


def encode_frame(entry: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One format-2 frame: ``entry`` as JSON followed by the raw ``blobs`` it refers to."""
    parts = _payload(entry, blobs)
    crc, size = _crc(parts)
    return b"".join([FRAME_HEADER.pack(FRAME_MAGIC, size, crc), *parts])


def encode_frame_v1(entry: dict[str, Any]) -> bytes:
    """A format-1 frame (what earlier versions wrote; for tests of the upgrade path)."""
    payload = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return FRAME_HEADER.pack(FRAME_MAGIC_V1, len(payload), zlib.crc32(payload)) + payload


@attrs.frozen
class Frame:
    start: int
    end: int
    entry: Any
    blobs: memoryview | None = None
    """The raw bytes after the JSON (format 2), which the entry indexes."""


@attrs.frozen
class BadFrame:
    """Where the readable journal stops and why.

    ``incomplete`` frames (a short header or payload) are what a writer in progress or a
    writer killed mid-append leaves; anything else is corruption.
    """

    offset: int
    incomplete: bool
    reason: str


def _split(payload: memoryview) -> tuple[Any, memoryview]:
    """(JSON entry, blob area) of a format-2 payload; ``ValueError`` if malformed."""
    if len(payload) < JSON_LEN.size:
        raise ValueError("payload shorter than its JSON length")
    (length,) = JSON_LEN.unpack_from(payload, 0)
    if JSON_LEN.size + length > len(payload):
        raise ValueError("JSON length beyond the payload")
    entry = json.loads(bytes(payload[JSON_LEN.size : JSON_LEN.size + length]))
    return entry, payload[JSON_LEN.size + length :]


def iter_frames(data: bytes, base: int) -> Iterator[Frame | BadFrame]:
    """Decode the frames in ``data`` (which starts at file offset ``base``).

    Yields every good frame, then at most one :class:`BadFrame` where decoding stopped.
    """
    view = memoryview(data)
    pos = 0
    size = len(data)
    while pos < size:
        if size - pos < FRAME_HEADER.size:
            yield BadFrame(base + pos, True, "truncated frame header")
            return
        magic, length, crc = FRAME_HEADER.unpack_from(data, pos)
        if magic not in (FRAME_MAGIC, FRAME_MAGIC_V1) or length > MAX_FRAME:
            yield BadFrame(base + pos, False, "bad frame header")
            return
        start = pos + FRAME_HEADER.size
        if size - start < length:
            yield BadFrame(base + pos, True, "truncated frame")
            return
        payload = view[start : start + length]
        if zlib.crc32(payload) != crc:
            yield BadFrame(base + pos, False, "frame checksum mismatch")
            return
        try:
            if magic == FRAME_MAGIC:
                entry, blobs = _split(payload)
            else:
                entry, blobs = json.loads(bytes(payload)), None
        except ValueError:
            yield BadFrame(base + pos, False, "unparsable frame")
            return
        yield Frame(base + pos, base + start + length, entry, blobs)
        pos = start + length


def read_from(fd: int, offset: int) -> bytes:
    size = os.fstat(fd).st_size
    if size <= offset:
        return b""
    chunks = []
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# -- snapshots -------------------------------------------------------------------------


def snapshot_parts(gen: int, body: dict[str, Any], blobs: Sequence[bytes]) -> list[bytes]:
    """A format-2 snapshot as the list of byte strings to write one after the other."""
    parts = _payload(body, blobs)
    crc, size = _crc(parts)
    header = b"%s%020d %08x %012d\n" % (SNAP_MAGIC, gen, crc, size)
    assert len(header) == SNAP_HEADER_LEN
    return [header, *parts]


def encode_snapshot(gen: int, body: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    return b"".join(snapshot_parts(gen, body, blobs))


class SnapshotError(ValueError):
    pass


@attrs.frozen
class Snapshot:
    gen: int
    version: int
    body: Any
    blobs: memoryview | None


def decode_snapshot(data: bytes) -> Snapshot:
    """Decode a snapshot of either format; raise :class:`SnapshotError` if it does not
    check out."""
    match = _SNAP_HEADER_RE.match(data[:SNAP_HEADER_LEN])
    if match is None:
        raise SnapshotError("not a trio-jobqueue snapshot (bad header or version)")
    version, gen, crc, length = int(match[1]), int(match[2]), int(match[3], 16), int(match[4])
    payload = memoryview(data)[SNAP_HEADER_LEN:]
    if len(payload) != length:
        raise SnapshotError(f"truncated snapshot ({len(payload)} of {length} bytes)")
    if zlib.crc32(payload) != crc:
        raise SnapshotError("snapshot checksum mismatch")
    try:
        if version == 1:
            return Snapshot(gen, 1, json.loads(bytes(payload)), None)
        body, blobs = _split(payload)
    except ValueError as exc:
        raise SnapshotError(f"unparsable snapshot: {exc}") from exc
    return Snapshot(gen, version, body, blobs)


def read_snapshot_gen(path: str) -> int:
    """The generation named by the snapshot header: 0 without a snapshot, -1 when the
    header does not parse."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNAP_HEADER_LEN)
    except FileNotFoundError:
        return 0
    match = _SNAP_HEADER_RE.match(head)
    return -1 if match is None else int(match[2])


def build_name(gen: int) -> str:
    """The temporary file a snapshot of generation ``gen`` is written to."""
    return f"snapshot.{gen}.tmp"


def parse_build_name(name: str) -> int | None:
    match = _BUILD_RE.fullmatch(name)
    return None if match is None else int(match[1])


# -- files and directories -------------------------------------------------------------


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: str, *, fsync: bool) -> None:
    """Create ``path`` (mode 0o700) if missing, making its creation durable."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)  # the umask may have removed bits; never added any
    if fsync:
        fsync_dir(os.path.dirname(path))


def open_file(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    ok = False
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        ok = True
    finally:
        if not ok:
            os.close(fd)
    return fd


def write_file(path: str, parts: Sequence[bytes], *, fsync: bool) -> None:
    """Create or replace the file at ``path`` with ``parts`` (fsynced if asked)."""
    fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for part in parts:
            write_all(fd, part)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(directory: str, name: str, data: bytes, *, fsync: bool) -> None:
    """Write ``directory/name`` as temp file + fsync + rename + directory fsync."""
    tmp = os.path.join(directory, f"{name}.tmp")
    write_file(tmp, [data], fsync=fsync)
    os.replace(tmp, os.path.join(directory, name))
    if fsync:
        fsync_dir(directory)


def quarantine(root: str, src_dir: str, name: str, reason: str) -> str:
    """Move ``src_dir/name`` into the quarantine folder; return its new path."""
    qdir = os.path.join(root, QUARANTINE)
    make_dir(qdir, fsync=False)
    target = os.path.join(
        qdir, f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(4).hex()}-{name}"
    )
    os.replace(os.path.join(src_dir, name), target)
    note = open_file(target + ".reason", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        write_all(note, f"{os.path.join(src_dir, name)}: {reason}\n".encode())
    finally:
        os.close(note)
    return target


def quarantine_bytes(root: str, name: str, data: bytes, reason: str) -> str:
    """Save ``data`` (e.g. a cut-off journal tail) into the quarantine folder."""
    qdir = os.path.join(root, QUARANTINE)
    make_dir(qdir, fsync=False)
    target = os.path.join(
        qdir, f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(4).hex()}-{name}"
    )
    fd = open_file(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    note = open_file(target + ".reason", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        write_all(note, f"{reason}\n".encode())
    finally:
        os.close(note)
    return target
