"""HDF5 episode files: round trip, validation, and crash safety with real killed subprocesses."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import h5py
import numpy as np
import pytest

from serl.data.episodes import (
    Episode,
    EpisodeRecorder,
    EpisodeWriter,
    episode_count,
    journal_path,
    read_config,
    read_episodes,
)
from serl.data.episodes.journal import PreAppendView

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_obs(i: float, with_images: bool = True) -> dict:
    obs = {"state": {"tcp_pose": np.full(7, i, np.float32), "gripper_width": np.float32(i / 100)}}
    if with_images:
        obs["images"] = {"wrist": np.full((8, 10, 3), int(i) % 256, np.uint8)}
    return obs


def record(recorder: EpisodeRecorder, steps: int, tag: float, success: bool) -> Episode:
    recorder.start(make_obs(tag), timestamp=0.0)
    for t in range(steps):
        last = t == steps - 1
        info = {"succeed": success and last, "intervened": t % 2 == 0, "timestamp": t + 1.0}
        if t == 1:
            info["executed_action"] = np.full(4, -1.0)
        recorder.add(np.full(4, tag), float(last and success), make_obs(tag + t + 1), last and success, last and not success, info)
    return recorder.finish()


def test_round_trip_recorder_writer_reader(tmp_path):
    path = tmp_path / "demos.h5"
    recorder = EpisodeRecorder(task="PandaPickCube", source="scripted")
    with EpisodeWriter(path, config={"task": "PandaPickCube", "n": 3}) as writer:
        names = [writer.write(record(recorder, steps, 10.0 * k, success=k != 1)) for k, steps in enumerate((3, 5, 4))]
    assert names == ["episode_000000", "episode_000001", "episode_000002"]
    assert episode_count(path) == 3 and episode_count(path, only_successful=True) == 2
    assert read_config(path) == {"task": "PandaPickCube", "n": 3}
    with h5py.File(path, "r") as handle:
        assert handle.attrs["schema_version"] == 1 and "created" in handle.attrs
        group = handle["episode_000001"]
        assert group["observations/images/wrist"].chunks == (1, 8, 10, 3)
        assert group.attrs["complete"] and group.attrs["length"] == 5

    episodes = list(read_episodes(path))
    first = episodes[0]
    assert len(first) == 3 and first.attrs["task"] == "PandaPickCube" and first.attrs["source"] == "scripted"
    assert first.success and not episodes[1].success
    assert first.actions.dtype == np.float32 and first.actions.shape == (3, 4)
    np.testing.assert_array_equal(first.actions[1], -1.0)  # executed (human) action, not the policy's
    np.testing.assert_array_equal(first.actions[0], 0.0)
    assert first.observations["state"]["tcp_pose"].shape == (4, 7)
    assert first.observations["state"]["gripper_width"].shape == (4, 1)
    np.testing.assert_array_equal(first.observations["images"]["wrist"][:, 0, 0, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(first.intervened, [True, False, True])
    np.testing.assert_array_equal(first.succeed, [False, False, True])
    np.testing.assert_array_equal(first.terminated, [False, False, True])
    np.testing.assert_array_equal(episodes[1].truncated, [False] * 4 + [True])
    np.testing.assert_array_equal(first.timestamps, [0.0, 1.0, 2.0, 3.0])
    assert [e.attrs["name"] for e in read_episodes(path, only_successful=True)] == ["episode_000000", "episode_000002"]


def test_gripper_changes_are_recorded_and_the_field_is_optional(tmp_path):
    path = tmp_path / "g.h5"
    recorder = EpisodeRecorder()
    recorder.start({"state": {"x": np.zeros(1)}})
    for t in range(3):
        recorder.add(np.zeros(2), 0.0, {"state": {"x": np.ones(1)}}, False, t == 2, {"gripper_changed": t == 1})
    legacy = Episode({"state": {"x": np.zeros((2, 1))}, "images": {}}, np.zeros((1, 2)), np.zeros(1), np.zeros(1, bool),
                     np.ones(1, bool), np.zeros(1, bool), np.zeros(1, bool), np.arange(2.0), {})
    with EpisodeWriter(path) as writer:
        writer.write(recorder.finish())
        writer.write(legacy)
    recorded, old = read_episodes(path)
    np.testing.assert_array_equal(recorded.gripper_changed, [False, True, False])
    assert old.gripper_changed is None


def test_append_continues_numbering_and_flags_config_change(tmp_path):
    path = tmp_path / "demos.h5"
    recorder = EpisodeRecorder(task="t")
    EpisodeWriter(path, config={"a": 1}).write(record(recorder, 2, 1.0, True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EpisodeWriter(path, config={"a": 1}).write(record(recorder, 2, 2.0, True))  # same config: no warning
    with pytest.warns(UserWarning, match="config that differs"):
        writer = EpisodeWriter(path, config={"a": 2})
    assert writer.write(record(recorder, 2, 3.0, True)) == "episode_000002"
    episodes = list(read_episodes(path))
    assert [e.actions[0, 0] for e in episodes] == [1.0, 2.0, 3.0]
    assert '"a": 2' in episodes[2].attrs["config"] and "config" not in episodes[0].attrs
    assert read_config(path) == {"a": 1}


def test_state_only_episode(tmp_path):
    recorder = EpisodeRecorder()
    recorder.start({"state": {"x": np.zeros(2)}})
    recorder.add(np.zeros(3), 0.0, {"state": {"x": np.ones(2)}}, False, True, {})
    EpisodeWriter(tmp_path / "s.h5").write(recorder.finish())
    (episode,) = read_episodes(tmp_path / "s.h5")
    assert episode.observations["images"] == {} and episode.observations["state"]["x"].shape == (2, 2)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda e: setattr(e, "actions", np.full((3, 2), np.nan)), "actions"),
        (lambda e: setattr(e, "rewards", np.zeros(2)), "rewards"),
        (lambda e: setattr(e, "timestamps", np.zeros(3)), "timestamps"),
        (lambda e: e.observations["state"].update(x=np.zeros((3, 1))), "observations/state/x"),
        (lambda e: e.observations["images"].update(cam=np.zeros((4, 2, 2, 3), np.float32)), "observations/images/cam"),
        (lambda e: e.observations.update(extra={}), "observations"),
        (lambda e: e.attrs.update(bad=object()), "bad"),
        (lambda e: setattr(e, "gripper_changed", np.zeros(2, bool)), "gripper_changed"),
    ],
)
def test_bad_episode_is_rejected_and_file_untouched(tmp_path, change, field):
    path = tmp_path / "d.h5"
    writer = EpisodeWriter(path)
    good = Episode(
        {"state": {"x": np.zeros((4, 1))}, "images": {}},
        np.zeros((3, 2)), np.zeros(3), np.zeros(3, bool), np.zeros(3, bool), np.zeros(3, bool), np.zeros(3, bool),
        np.arange(4.0), {},
    )
    writer.write(good)
    size = os.path.getsize(path)
    change(good)
    with pytest.raises(ValueError, match=field.replace("/", "/")):
        writer.write(good)
    assert episode_count(path) == 1 and os.path.getsize(path) == size


def test_not_an_episode_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = 1
    with pytest.raises(ValueError, match="not an episode file"):
        list(read_episodes(path))
    with pytest.raises(ValueError, match="not an episode file"):
        EpisodeWriter(path)


def test_incomplete_group_is_skipped_with_warning(tmp_path):
    path = tmp_path / "d.h5"
    EpisodeWriter(path).write(record(EpisodeRecorder(), 2, 1.0, True))
    with h5py.File(path, "a") as handle:
        handle.create_group("episode_000001").create_dataset("actions", data=np.zeros((2, 4)))
    with pytest.warns(UserWarning, match="episode_000001"):
        assert len(list(read_episodes(path))) == 1
    assert episode_count(path) == 1
    assert EpisodeWriter(path).write(record(EpisodeRecorder(), 2, 2.0, True)) == "episode_000002"


# -- crash safety with real processes ---------------------------------------------------------------

CHILD_RECORDER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from serl.data.episodes import EpisodeRecorder, EpisodeWriter, episode_count
    path, steps, step_sleep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    writer = EpisodeWriter(path, config={"task": "crash"})
    recorder = EpisodeRecorder(task="crash", source="test")
    k = episode_count(path)
    while True:
        recorder.start({"state": {"p": np.full(3, k)}, "images": {"c": np.full((16, 16, 3), k % 256, np.uint8)}})
        for t in range(steps):
            recorder.add(np.full(2, k), 0.0, {"state": {"p": np.full(3, k)}, "images": {"c": np.full((16, 16, 3), k % 256, np.uint8)}},
                         False, t == steps - 1, {})
            time.sleep(step_sleep)
        writer.write(recorder.finish())
        print(k, flush=True)
        k += 1
    """
)


def start_child(path, steps: int, step_sleep: float, code: str = CHILD_RECORDER) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(steps), str(step_sleep)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_for_lines(proc: subprocess.Popen, count: int, timeout: float = 30.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while len(lines) < count:
        assert time.monotonic() < deadline, "child did not report in time"
        line = proc.stdout.readline()
        assert line, f"child exited early: {proc.stderr.read()}"
        lines.append(line.strip())
    return lines


def file_state(path) -> tuple[bytes, int, bool]:
    """Bytes, mtime and whether a journal is pending: what reading must leave alone."""
    with open(path, "rb") as handle:
        return handle.read(), os.stat(path).st_mtime_ns, os.path.exists(journal_path(path))


def assert_intact(path, at_least: int) -> int:
    """Read the file (without changing it), then let a writer roll back what a killed one left."""
    before = file_state(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        episodes = list(read_episodes(path))
    assert all("rolled back" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert file_state(path) == before
    assert len(episodes) >= at_least
    for k, episode in enumerate(episodes):
        assert episode.attrs["name"] == f"episode_{k:06d}"
        np.testing.assert_array_equal(episode.actions, np.full((len(episode), 2), k))
        assert np.all(episode.observations["images"]["c"] == k % 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "rolled back" when the kill hit a write
        EpisodeWriter(path)
    assert not os.path.exists(journal_path(path))
    assert [e.attrs["name"] for e in read_episodes(path)] == [e.attrs["name"] for e in episodes]
    return len(episodes)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_mid_episode_keeps_finished_episodes(tmp_path, sig):
    path = tmp_path / "demos.h5"
    proc = start_child(path, steps=10, step_sleep=0.01)
    wait_for_lines(proc, 2)
    time.sleep(0.03)  # inside the third episode's steps
    proc.send_signal(sig)
    proc.wait(timeout=10)
    count = assert_intact(path, at_least=2)
    assert count >= 2  # under load the child may have finished more before the signal landed
    # the session can be resumed: a new writer appends after the kept episodes
    proc = start_child(path, steps=2, step_sleep=0.0)
    wait_for_lines(proc, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert_intact(path, at_least=count + 1)


def test_sigkill_while_writing_never_corrupts(tmp_path):
    """The child only writes (no pauses), so kills land inside HDF5 writes; the journal rolls back."""
    path = tmp_path / "hammer.h5"
    rng = random.Random(int(os.environ.get("SERL_TEST_SEED", "0")))
    reported = 0
    for _ in range(6):
        proc = start_child(path, steps=3, step_sleep=0.0)
        reported += len(wait_for_lines(proc, 1))
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "rolled back" when the kill hit a write
            count = assert_intact(path, at_least=reported)
        reported = count


CHILD_CRASH_IN_WRITE = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    from serl.data import episodes as E
    path, mode = sys.argv[1], sys.argv[2]
    ep = lambda k: E.Episode({"state": {"p": np.full((3, 3), k)}, "images": {"c": np.full((3, 16, 16, 3), k, np.uint8)}},
                             np.full((2, 2), k), np.zeros(2), np.zeros(2, bool), np.zeros(2, bool), np.zeros(2, bool),
                             np.zeros(2, bool), np.arange(3.0), {})
    writer = E.EpisodeWriter(path)
    writer.write(ep(0)); writer.write(ep(1))
    original = E.EpisodeWriter._write_group
    def crashing(self, handle, name, episode):
        handle.create_group(name).create_dataset("actions", data=np.zeros((50, 2)))
        handle.flush()  # metadata of the root group rewritten in place, then the process dies/is interrupted
        os.kill(os.getpid(), signal.SIGKILL if mode == "kill" else signal.SIGINT)
        del handle[name]
        original(self, handle, name, episode)
    E.EpisodeWriter._write_group = crashing
    try:
        writer.write(ep(2))
    except KeyboardInterrupt:
        print("interrupted after write", flush=True)
        sys.exit(3)
    """
)


def killed_inside_write(path) -> None:
    """Leave ``path`` as a writer killed mid-append does: two episodes, a third half written, a journal."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_CRASH_IN_WRITE, str(path), "kill"],
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert os.path.exists(journal_path(path))


def test_crash_inside_write_is_rolled_back(tmp_path):
    path = tmp_path / "d.h5"
    killed_inside_write(path)
    with pytest.warns(UserWarning, match="not rolled back yet"):
        episodes = list(read_episodes(path))
    assert [int(e.actions[0, 0]) for e in episodes] == [0, 1]
    with pytest.warns(UserWarning, match="rolled back"):
        writer = EpisodeWriter(path)
    assert not os.path.exists(journal_path(path))
    with h5py.File(path, "r") as handle:
        assert sorted(handle) == ["episode_000000", "episode_000001"]
    assert writer.write(episodes[0]) == "episode_000002"


def test_reading_a_file_with_a_pending_journal_never_writes(tmp_path):
    path = tmp_path / "d.h5"
    killed_inside_write(path)
    with h5py.File(path, "r") as handle:  # the killed append changed the file in place
        assert "episode_000002" in handle
    before = file_state(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not rolled back yet"
        assert [e.attrs["name"] for e in read_episodes(path)] == ["episode_000000", "episode_000001"]
        assert episode_count(path) == 2 and read_config(path) == {}
    assert file_state(path) == before
    assert before[2]  # the journal is still there for a writer to roll back


def test_pre_append_view_lays_the_journal_over_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789abcdef")
    with PreAppendView(str(path), 12, [(2, b"XY"), (8, b"ZZZ")]) as view:
        assert view.read() == b"01XY4567ZZZb"
        view.seek(3)
        assert view.read(6) == b"Y4567Z"
        assert view.seek(-2, os.SEEK_END) == 10 and view.read() == b"Zb" and view.read() == b""
    with PreAppendView(str(path), 20, [(16, b"tail")]) as view:  # the file was cut short
        assert view.read() == b"0123456789abcdeftail"


def test_ctrl_c_inside_write_is_deferred_until_episode_is_on_disk(tmp_path):
    path = tmp_path / "d.h5"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_CRASH_IN_WRITE, str(path), "int"],
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 3 and "interrupted after write" in proc.stdout, proc.stderr
    assert [int(e.actions[0, 0]) for e in read_episodes(path)] == [0, 1, 2]


def test_discard_marks_an_episode_that_readers_then_skip(tmp_path):
    path = tmp_path / "d.h5"
    writer = EpisodeWriter(path)
    names = [writer.write(record(EpisodeRecorder(), 2, float(k), True)) for k in range(3)]
    writer.discard(names[1])
    assert [e.attrs["name"] for e in read_episodes(path)] == ["episode_000000", "episode_000002"]
    assert episode_count(path) == 2
    assert [e.attrs["discarded"] for e in read_episodes(path, include_discarded=True)] == [False, True, False]
    with pytest.raises(ValueError, match="no episode"):
        writer.discard("episode_000009")
    assert writer.write(record(EpisodeRecorder(), 2, 3.0, True)) == "episode_000003"
    assert not os.path.exists(journal_path(path))


def test_mark_success_sets_the_last_step():
    recorder = EpisodeRecorder()
    recorder.start(make_obs(0))
    with pytest.raises(ValueError, match="no step"):
        recorder.mark_success()
    for t in range(3):
        recorder.add(np.zeros(4), 0.0, make_obs(t + 1), False, t == 2, {})
    recorder.mark_success()
    episode = recorder.finish()
    assert episode.success
    np.testing.assert_array_equal(episode.rewards, [0, 0, 1])
    np.testing.assert_array_equal(episode.terminated, [False, False, True])
    np.testing.assert_array_equal(episode.truncated, [False, False, False])
