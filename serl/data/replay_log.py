"""The replay buffers' on-disk form: an append-only, checksummed log of everything inserted, replayed on resume.

A log is a folder of segments (``00000000.log``, ``00000001.log``, ...). Each segment starts with a header
record holding the buffer's counters at that point (next transition id, frame counter, whether the episode
is open and its last frame) and whatever the owner wants kept with it (the transport's dedup table), then
data records, each a list of transitions plus the owner's fields. A camera frame that equals the previous
transition's next frame is not written again (the buffer's own sharing rule), so frames are on disk once.

``append`` returns once the record is on disk (written and fsync'd): an acknowledgement given after it is
durable. A torn record at the end of the last segment (a kill mid-write) is cut off when the log is opened;
a damaged record anywhere else is an error. ``retire`` deletes leading segments whose transitions the buffer
no longer holds, so disk use follows what the buffer holds.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robot_servers import wire
from serl.data.replay import image_keys

MAGIC = b"SRL1"
_HEAD = struct.Struct("<4sIQ")  # magic, crc32 of the payload, payload length
_SEGMENT = re.compile(r"^(\d{8})\.log$")
MAX_RECORD_BYTES = 1 << 31


class ReplayLogError(RuntimeError):
    """A log that cannot be read as written (damaged before its last record, or not a replay log)."""


class _FrameCursor:
    """Mirror of a ReplayBuffer's counters, advanced by the same rule, so headers can state them."""

    def __init__(self, num_inserted: int = 0, num_frames: int = 0, open_episode: bool = False,
                 last_frame: Mapping | None = None):
        self.num_inserted, self.num_frames, self.open_episode = num_inserted, num_frames, open_episode
        self.last_frame = dict(last_frame) if last_frame else None

    def continues(self, obs: Mapping, image_keys) -> bool:
        return (self.open_episode and bool(image_keys) and self.last_frame is not None
                and all(np.array_equal(self.last_frame[k], obs[k]) for k in image_keys))

    def advance(self, transition: Mapping, image_keys, continued: bool) -> None:
        self.num_inserted += 1
        if image_keys:
            self.num_frames += 1 if continued else 2
            self.last_frame = {k: np.asarray(transition["next_observations"][k]) for k in image_keys}
        self.open_episode = not bool(np.asarray(transition["dones"]))

    def header(self) -> dict:
        header = {"num_inserted": self.num_inserted, "num_frames": self.num_frames, "open_episode": self.open_episode}
        if self.open_episode and self.last_frame is not None:
            header["last_frame"] = self.last_frame
        return header


class ReplayLog:
    """Append-only log of one buffer's inserts under ``folder``; thread-safe.

    ``header_extra`` is called when a segment starts and its JSON-able result is kept in the header (the
    owner's state as of that point, e.g. a dedup table); ``segment_bytes`` is the size at which a new
    segment starts.
    """

    def __init__(self, folder: str | os.PathLike, *, segment_bytes: int = 64 * 2**20, fsync: bool = True,
                 header_extra: Callable[[], Any] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = int(segment_bytes)
        self.fsync = fsync
        self.header_extra = header_extra
        self._lock = threading.Lock()
        self._image_keys: tuple[str, ...] | None = None
        self._cursor = _FrameCursor()
        self._segments: list[tuple[int, int]] = []  # (segment number, id of its first transition)
        self._file = None
        self._size = 0
        self._stored_frame: dict | None = None  # previous next frame as written in the current segment
        self._undo = None
        self.appended_bytes = 0
        for fname in os.listdir(self.folder):
            if fname.startswith(".tmp-"):
                os.unlink(self.folder / fname)  # an interrupted write of an older version
        self._recover()

    # ---- reading -----------------------------------------------------------------------------------
    def segments(self) -> list[int]:
        return sorted(int(m[1]) for m in map(_SEGMENT.match, os.listdir(self.folder)) if m)

    def _path(self, number: int) -> Path:
        return self.folder / f"{number:08d}.log"

    def _records(self, number: int, *, last: bool) -> Iterator[tuple[int, dict]]:
        """(end offset, record) of one segment; a bad tail of the last segment ends it quietly."""
        path = self._path(number)
        with open(path, "rb") as f:
            offset = 0
            while True:
                head = f.read(_HEAD.size)
                if not head:
                    return
                try:
                    magic, crc, length = _HEAD.unpack(head)
                    if magic != MAGIC or length > MAX_RECORD_BYTES:
                        raise ValueError("bad record header")
                    payload = f.read(length)
                    if len(payload) != length or zlib.crc32(payload) != crc:
                        raise ValueError("truncated or damaged record")
                    record = wire.unpackb(payload, what="replay log record")
                except (ValueError, struct.error) as err:
                    if last:
                        return
                    raise ReplayLogError(f"{path} at byte {offset}: {err}") from None
                offset += _HEAD.size + length
                yield offset, record

    def _recover(self) -> None:
        """Index the segments, cut a torn tail off the last one and take the counters from it."""
        numbers = self.segments()
        while numbers:
            records = self._records(numbers[-1], last=True)
            first = next(records, None)
            if first is None:  # killed before its header was whole
                self._path(numbers.pop()).unlink()
                continue
            header = self._header(numbers[-1], first[1])
            self._cursor = _FrameCursor(int(header["num_inserted"]), int(header["num_frames"]),
                                        bool(header["open_episode"]), header.get("last_frame"))
            end = first[0]
            for end, record in records:
                self._advance(record["transitions"])
            if end < self._path(numbers[-1]).stat().st_size:
                with open(self._path(numbers[-1]), "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            break
        for number in numbers:
            _, header = next(self._records(number, last=False))
            self._segments.append((number, int(self._header(number, header)["num_inserted"])))

    def _header(self, number: int, record: dict) -> dict:
        if record.get("kind") != "segment":
            raise ReplayLogError(f"{self._path(number)}: does not start with a segment header")
        return record

    def replay(self) -> Iterator[dict]:
        """Every record in order: first the header of the oldest segment kept, then data records."""
        numbers = self.segments()
        for i, number in enumerate(numbers):
            stored: dict | None = None
            for j, (_, record) in enumerate(self._records(number, last=i == len(numbers) - 1)):
                if j == 0:
                    stored = None
                    if i == 0:
                        yield record
                    continue
                transitions = []
                for t in record["transitions"]:
                    t = dict(t)
                    if t.pop("shared_frame", False):
                        t["observations"] = {**t["observations"], **stored}
                    stored = {k: t["next_observations"][k] for k in self._keys(t)}
                    transitions.append(t)
                yield {**record, "transitions": transitions}

    # ---- writing -----------------------------------------------------------------------------------
    def append(self, transitions: list[Mapping], **fields: Any) -> None:
        """Write one record (transitions plus JSON-able ``fields``) and return once it is on disk.

        On an I/O error (a full disk) the partial record is cut off again and the error is raised: the log
        is as before the call.
        """
        with self._lock:
            if self._file is None or self._size >= self.segment_bytes:
                self._start_segment()  # also after every open: each run of the owner starts a segment
            cursor = _FrameCursor(self._cursor.num_inserted, self._cursor.num_frames, self._cursor.open_episode,
                                  self._cursor.last_frame)
            stored_frame = self._stored_frame
            encoded = []
            for t in transitions:
                keys = self._keys(t)
                continued = cursor.continues(t["observations"], keys)
                out = dict(t)
                if keys and stored_frame is not None and continued:
                    out["observations"] = {k: v for k, v in t["observations"].items() if k not in keys}
                    out["shared_frame"] = True
                encoded.append(out)
                cursor.advance(t, keys, continued)
                stored_frame = cursor.last_frame
            start, before = self._size, (self._cursor, self._stored_frame)
            self._write(wire.packb({"kind": "data", **fields, "transitions": encoded}, what="replay log record"))
            self._cursor, self._stored_frame = cursor, stored_frame
            self._undo = (start, before)

    def undo_last(self) -> None:
        """Take back the record of the last ``append`` (a write that belongs with it failed elsewhere)."""
        with self._lock:
            if self._undo is None:
                raise ValueError("undo_last: nothing to take back")
            start, (self._cursor, self._stored_frame) = self._undo
            self._undo = None
            self._file.seek(start)
            self._file.truncate(start)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self.appended_bytes -= self._size - start
            self._size = start

    def _advance(self, transitions: list[Mapping]) -> None:
        for t in transitions:
            keys = self._keys(t)
            if t.get("shared_frame"):
                t = {**t, "observations": {**t["observations"], **self._cursor.last_frame}}
            continued = self._cursor.continues(t["observations"], keys)
            self._cursor.advance(t, keys, continued)
            self._stored_frame = self._cursor.last_frame

    def _keys(self, transition: Mapping) -> tuple[str, ...]:
        """The camera keys, from the first transition seen (its next observation is always whole)."""
        if self._image_keys is None:
            self._image_keys = image_keys(transition["next_observations"])
        return self._image_keys

    def _start_segment(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        number = self._segments[-1][0] + 1 if self._segments else 0
        header = {"kind": "segment", **self._cursor.header(),
                  "extra": self.header_extra() if self.header_extra else None}
        payload = wire.packb(header, what="replay log header")
        path = self._path(number)
        self._file = open(path, "wb")
        self._size = 0
        try:
            self._write(payload)
        except OSError:
            self._file.close()
            self._file = None
            path.unlink(missing_ok=True)
            raise
        self._segments.append((number, self._cursor.num_inserted))
        self._stored_frame = self._undo = None
        if self.fsync:
            _fsync_dir(self.folder)

    def _write(self, payload: bytes) -> None:
        record = _HEAD.pack(MAGIC, zlib.crc32(payload), len(payload)) + payload
        start = self._size
        try:
            self._file.write(record)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError:
            try:  # leave the segment as it was, so the next append (space back) continues a valid log
                self._file.seek(start)
                self._file.truncate(start)
                self._file.flush()
            except OSError:
                pass
            raise
        self._size += len(record)
        self.appended_bytes += len(record)

    # ---- retiring ------------------------------------------------------------------------------------
    def retire(self, oldest_needed: int) -> int:
        """Delete leading segments all of whose transitions have ids below ``oldest_needed``; returns how many."""
        removed = 0
        with self._lock:
            while len(self._segments) > 1 and self._segments[1][1] <= oldest_needed:
                number, _ = self._segments.pop(0)
                self._path(number).unlink(missing_ok=True)
                removed += 1
        return removed

    @property
    def num_transitions(self) -> int:
        """Id the next appended transition gets (transitions ever appended, retired ones included)."""
        return self._cursor.num_inserted

    def disk_bytes(self) -> int:
        return sum(self._path(n).stat().st_size for n in self.segments())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
