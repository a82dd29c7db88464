"""The buffers' on-disk log: replay rebuilds a buffer bit for bit, frames are stored once, torn tails and
retired segments are handled."""

from __future__ import annotations

import numpy as np
import pytest

from serl.data.replay import ReplayBuffer
from serl.data.replay_log import ReplayLog, ReplayLogError

FRAME = (16, 16, 3)


def _obs(step: int, episode: int) -> dict:
    return {"state": np.full(4, step + 100 * episode, np.float32),
            "wrist": np.full(FRAME, (7 * step + 31 * episode) % 251, np.uint8)}


def _episodes(count: int, length: int, start: int = 0) -> list[dict]:
    out = []
    for episode in range(start, start + count):
        for step in range(length):
            out.append({"observations": _obs(step, episode), "actions": np.full(2, step / length, np.float32),
                        "rewards": np.float32(step == length - 1), "masks": np.float32(step != length - 1),
                        "dones": step == length - 1, "next_observations": _obs(step + 1, episode),
                        "intervened": False})
    return out


def _fill(log: ReplayLog, buffer: ReplayBuffer, transitions: list[dict], per_record: int = 8) -> None:
    for i in range(0, len(transitions), per_record):
        chunk = transitions[i:i + per_record]
        log.append(chunk, seq=i // per_record)
        buffer.insert_many(chunk)


def _rebuild(folder, capacity: int) -> ReplayBuffer:
    log = ReplayLog(folder)
    records = log.replay()
    header = next(records)
    buffer = ReplayBuffer(_obs(0, 0), 2, capacity)
    buffer.start_at(header["num_inserted"], header["num_frames"], header["open_episode"], header.get("last_frame"))
    for record in records:
        buffer.insert_many(record["transitions"])
    log.close()
    return buffer


def _assert_same(a: ReplayBuffer, b: ReplayBuffer) -> None:
    assert (a.num_inserted, a.num_frames, a.oldest_id, len(a)) == (b.num_inserted, b.num_frames, b.oldest_id, len(b))
    ids = np.arange(a.oldest_id, a.num_inserted)
    left, right = a.gather(ids), b.gather(ids)
    for key in ("actions", "rewards", "masks", "dones"):
        np.testing.assert_array_equal(left[key], right[key])
    for field in ("observations", "next_observations"):
        for key in left[field]:
            np.testing.assert_array_equal(left[field][key], right[field][key])


def test_replay_rebuilds_the_buffer_bit_for_bit_with_each_frame_written_once(tmp_path):
    log = ReplayLog(tmp_path / "log")
    buffer = ReplayBuffer(_obs(0, 0), 2, 1000)
    transitions = _episodes(5, 20)
    _fill(log, buffer, transitions)
    log.close()
    _assert_same(buffer, _rebuild(tmp_path / "log", 1000))
    frames = 5 * 21  # an episode of 20 steps has 21 distinct frames
    assert buffer.num_frames == frames
    frame_bytes = frames * np.prod(FRAME)
    assert frame_bytes < log.disk_bytes() < 1.5 * frame_bytes  # frames once, plus a little per transition


def test_retired_segments_are_deleted_and_the_rest_still_replays_exactly(tmp_path):
    log = ReplayLog(tmp_path / "log", segment_bytes=4096)
    buffer = ReplayBuffer(_obs(0, 0), 2, 60)
    _fill(log, buffer, _episodes(12, 15))  # an episode ends mid-record: segments start inside episodes too
    before = len(log.segments())
    assert log.retire(buffer.oldest_id) > 0
    assert len(log.segments()) < before
    log.close()
    rebuilt = _rebuild(tmp_path / "log", 60)
    _assert_same(buffer, rebuilt)
    # and both go on identically, first frame shared across the cut included
    more = _episodes(2, 15, start=12)
    buffer.insert_many(more)
    rebuilt.insert_many(more)
    _assert_same(buffer, rebuilt)


def test_a_torn_last_record_is_cut_off_and_appending_goes_on(tmp_path):
    log = ReplayLog(tmp_path / "log")
    buffer = ReplayBuffer(_obs(0, 0), 2, 1000)
    _fill(log, buffer, _episodes(2, 10))
    log.close()
    segment = tmp_path / "log" / "00000000.log"
    whole = segment.stat().st_size
    with open(segment, "ab") as f:  # a kill in the middle of a write
        f.write(b"SRL1\x00\x00\x00\x00" + (10**6).to_bytes(8, "little") + b"partial")
    reopened = ReplayLog(tmp_path / "log")
    assert segment.stat().st_size == whole
    more = _episodes(1, 10, start=2)
    reopened.append(more, seq=99)
    buffer.insert_many(more)
    reopened.close()
    _assert_same(buffer, _rebuild(tmp_path / "log", 1000))


def test_damage_before_the_last_record_is_an_error_not_silent_loss(tmp_path):
    log = ReplayLog(tmp_path / "log", segment_bytes=2048)
    _fill(log, ReplayBuffer(_obs(0, 0), 2, 1000), _episodes(3, 10))
    log.close()
    first = tmp_path / "log" / "00000000.log"
    data = bytearray(first.read_bytes())
    data[-5] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(ReplayLogError, match="00000000.log"):
        list(ReplayLog(tmp_path / "log").replay())


def test_undo_takes_back_the_last_record(tmp_path):
    log = ReplayLog(tmp_path / "log")
    buffer = ReplayBuffer(_obs(0, 0), 2, 1000)
    first, second = _episodes(1, 10), _episodes(1, 10, start=1)
    log.append(first, seq=0)
    buffer.insert_many(first)
    log.append(second, seq=1)
    log.undo_last()
    log.close()
    _assert_same(buffer, _rebuild(tmp_path / "log", 1000))
    assert ReplayLog(tmp_path / "log").num_transitions == 10
