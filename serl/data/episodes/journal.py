"""The undo journal that keeps an episode file readable when a process dies inside an append.

Appending to an HDF5 file rewrites a few metadata blocks in place (B-tree nodes, heaps,
superblock), so a SIGKILL or power loss inside a write could leave the file unreadable. Before
each append the writer saves every byte of the old file that is not raw dataset data (a few KB
of metadata) to ``<file>.journal`` and holds an ``flock`` on it. The next writer that finds a
journal whose writer is gone puts those bytes back and truncates the file to its old size, as
SQLite does with its rollback journal (:func:`recover`). Readers never write: they see the file
as it was before the append through :class:`PreAppendView`, the journaled bytes laid over it.

Journal format: magic, old size and segment count, then (offset, size, bytes) per segment, then
an end marker and the CRC32 of everything before it. It is written under a temporary name and
renamed, so a journal at :func:`journal_path` is always complete.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import io
import os
import struct
import tempfile
import time
import warnings
import zlib
from typing import Any

import h5py

from serl.data.episodes.files import fsync_dir

_JOURNAL_MAGIC = b"SERLJNL1"
_JOURNAL_END = b"JNLEND01"

Segments = list[tuple[int, bytes]]


def journal_path(path: str | os.PathLike) -> str:
    """Where the undo journal of an episode file lives while an append is in progress."""
    return os.fspath(path) + ".journal"


def raw_ranges(group: h5py.Group) -> list[tuple[int, int]]:
    """(offset, size) of the raw data of every dataset below ``group``; HDF5 never rewrites these on append."""
    ranges: list[tuple[int, int]] = []

    def visit(_name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        dsid = obj.id
        if obj.chunks is not None:
            if hasattr(dsid, "chunk_iter"):  # HDF5 >= 1.14: one call for all chunks
                dsid.chunk_iter(lambda info: ranges.append((int(info.byte_offset), int(info.size))))
            else:
                for index in range(dsid.get_num_chunks()):
                    info = dsid.get_chunk_info(index)
                    ranges.append((int(info.byte_offset), int(info.size)))
        else:
            offset = dsid.get_offset()
            if offset is not None:
                ranges.append((int(offset), int(dsid.get_storage_size())))

    group.visititems(visit)
    return ranges


def complement(ranges: list[tuple[int, int]], end: int) -> list[tuple[int, int]]:
    """Byte ranges of [0, end) not covered by ``ranges``."""
    gaps, cursor = [], 0
    for offset, size in sorted(ranges):
        if offset > cursor:
            gaps.append((cursor, min(offset, end) - cursor))
        cursor = max(cursor, offset + size)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end - cursor))
    return [(o, n) for o, n in gaps if n > 0]


def write_journal(path: str, old_size: int, segments: list[tuple[int, int]]) -> int:
    """Save the given byte ranges of ``path`` to its journal; return the locked journal fd."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".journal-tmp", dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        crc = 0
        with open(path, "rb") as source:
            chunks = [_JOURNAL_MAGIC, struct.pack("<QQ", old_size, len(segments))]
            for offset, size in segments:
                source.seek(offset)
                data = source.read(size)
                if len(data) != size:
                    raise OSError(f"{path}: short read while journaling")
                chunks.append(struct.pack("<QQ", offset, size))
                chunks.append(data)
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            os.write(fd, chunk)
        os.write(fd, _JOURNAL_END + struct.pack("<I", crc))
        os.fsync(fd)
        os.rename(tmp, journal_path(path))
        fsync_dir(path)
        return fd
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _parse_journal(blob: bytes, where: str) -> tuple[int, Segments]:
    if not blob.startswith(_JOURNAL_MAGIC) or blob[-12:-4] != _JOURNAL_END:
        raise ValueError(f"{where}: not a complete episode journal")
    (crc,) = struct.unpack("<I", blob[-4:])
    body = blob[:-12]
    if zlib.crc32(body) != crc:
        raise ValueError(f"{where}: journal checksum mismatch")
    old_size, count = struct.unpack_from("<QQ", body, len(_JOURNAL_MAGIC))
    cursor = len(_JOURNAL_MAGIC) + 16
    segments = []
    for _ in range(count):
        offset, size = struct.unpack_from("<QQ", body, cursor)
        cursor += 16
        segments.append((offset, body[cursor : cursor + size]))
        cursor += size
    return old_size, segments


def read_journal(path: str | os.PathLike) -> tuple[int, Segments] | None:
    """(old size, saved segments) of the pending journal of ``path``, or None when there is none."""
    jpath = journal_path(path)
    try:
        with open(jpath, "rb") as handle:
            blob = handle.read()
    except FileNotFoundError:
        return None
    return _parse_journal(blob, jpath)


def remove_stale_temporaries(path: str) -> None:
    """Delete journal/creation temporaries left by writers that died before renaming them."""
    pattern = os.path.basename(path) + "."
    directory = os.path.dirname(os.path.abspath(path))
    for entry in os.listdir(directory):
        if not (entry.startswith(pattern) and entry.endswith((".journal-tmp", ".tmp"))):
            continue
        full = os.path.join(directory, entry)
        if entry.endswith(".tmp"):
            # a file being created is renamed within milliseconds; older ones are leftovers
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.path.getmtime(full) > 60:
                    os.unlink(full)
            continue
        try:
            fd = os.open(full, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer owns it
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)
        finally:
            os.close(fd)


def roll_back(path: str, journal_fd: int) -> None:
    """Put the journaled bytes back and cut the file to its old size (caller holds the journal lock)."""
    with os.fdopen(os.dup(journal_fd), "rb") as handle:
        handle.seek(0)
        old_size, segments = _parse_journal(handle.read(), journal_path(path))
    with open(path, "r+b") as target:
        for offset, data in segments:
            target.seek(offset)
            target.write(data)
        target.truncate(old_size)
        target.flush()
        os.fsync(target.fileno())
    os.unlink(journal_path(path))
    fsync_dir(path)


def recover(path: str | os.PathLike) -> bool:
    """Roll back an append that was interrupted (its writer died); return True if it did.

    Waits while a live writer holds the journal. Needs write access to the file.
    """
    path = os.fspath(path)
    jpath = journal_path(path)
    try:
        fd = os.open(jpath, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while a live writer is mid-append
        try:
            still_there = os.stat(jpath).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            still_there = False
        if not still_there:
            return False  # the writer finished and removed it
        roll_back(path, fd)
    finally:
        os.close(fd)
    warnings.warn(f"{path}: rolled back an episode write that was interrupted", stacklevel=2)
    return True


class PreAppendView(io.RawIOBase):
    """Read-only file object showing an episode file as it was before a journaled append.

    Bytes past the old size are hidden and the journaled segments replace the file's own, so
    h5py can open the last consistent state without the file being modified. Everything else
    below the old size is raw data of earlier episodes, which appends never rewrite.
    """

    def __init__(self, path: str, old_size: int, segments: Segments) -> None:
        super().__init__()
        self._file = open(path, "rb")
        self._size = old_size
        self._segments = sorted(segments)
        self._starts = [offset for offset, _ in self._segments]
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self._pos
        count = max(0, min(len(view), self._size - start))
        self._file.seek(start)
        got = self._file.readinto(view[:count]) or 0
        view[got:count] = bytes(count - got)  # past the current end: bytes the journal restores
        end = start + count
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        for offset, data in self._segments[first:]:
            if offset >= end:
                break
            lo, hi = max(offset, start), min(offset + len(data), end)
            if lo < hi:
                view[lo - start : hi - start] = data[lo - offset : hi - offset]
        self._pos = end
        return count

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()
