"""Demo recording end to end: scripted expert success rate, keyboard over a real pty, killed recorders, viewer."""

from __future__ import annotations

import os
import pty
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings

import gymnasium as gym
import numpy as np
import pytest

from serl.data.episodes import episode_count, journal_path, read_config, read_episodes

pytest.importorskip("mujoco")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = ROOT
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def pick_demos(tmp_path_factory):
    from serl.cli.record_demos import RecordDemosConfig, record_demos

    path = tmp_path_factory.mktemp("demos") / "pick.h5"
    record_demos(RecordDemosConfig(task="PandaPickCube", n=8, teleop="scripted", out=path, seed=0,
                                   keep_failed=True, max_episodes=8, display=False))
    return path


def test_scripted_pick_cube_demos_succeed(pick_demos):
    episodes = list(read_episodes(pick_demos))
    assert len(episodes) == 8
    assert sum(e.success for e in episodes) / len(episodes) >= 0.9
    first = episodes[0]
    assert first.attrs["source"] == "scripted" and first.attrs["task"] == "PandaPickCube"
    assert first.intervened.all() and first.rewards[-1] == 1.0 and first.terminated[-1]
    assert first.actions.shape[1] == 7 and np.abs(first.actions).max() <= 1.0
    assert first.observations["state"]["tcp_pose"].shape == (len(first) + 1, 6)  # euler layout, as the actor sees it
    layout = read_config(pick_demos)["observation"]
    assert layout["state_keys"] == ["tcp_pose", "tcp_vel", "wrench", "gripper_width", "cube_pose"]
    assert layout["relative_frame"] and layout["euler"]


def test_scripted_peg_insertion_demos_succeed(tmp_path):
    from serl.cli.record_demos import RecordDemosConfig, record_demos

    path = tmp_path / "peg.h5"
    record_demos(RecordDemosConfig(task="PandaPegInsertion", n=5, teleop="scripted", out=path, seed=7,
                                   keep_failed=True, max_episodes=5, display=False))
    episodes = list(read_episodes(path))
    assert len(episodes) == 5 and sum(e.success for e in episodes) >= 5 * 0.9
    assert episodes[0].actions.shape[1] == 6  # this task has no gripper action


def test_demo_view_summary_plot_and_video(pick_demos, tmp_path, capsys):
    from serl.cli.demo_view import DemoViewConfig, demo_view, summarize

    demo_view(DemoViewConfig(file=pick_demos, episode=1, plot=tmp_path / "p.png", video=tmp_path / "v.gif"))
    out = capsys.readouterr().out
    assert "8 episodes" in out and "episode_000007" in out and "action min" in out
    assert "scripted-expert steps" in out and "human" not in out  # scripted demos act through teleop
    assert (tmp_path / "p.png").stat().st_size > 1000
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "v.gif")
    episode = list(read_episodes(pick_demos))[1]
    assert frames.shape[0] == len(episode) + 1
    summary = summarize(list(read_episodes(pick_demos)))
    assert summary["episodes"] == 8 and len(summary["action_min"]) == 7
    with pytest.raises(ValueError, match="episode"):
        demo_view(DemoViewConfig(file=pick_demos, episode=99, plot_file=False, video_file=False))
    help_text = subprocess.run([sys.executable, "-m", "serl.cli.main", "demos", "view", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "--no-plot-file" in help_text and "--no-video-file" in help_text and "--no-no-" not in help_text


def test_record_demos_config_validation():
    from serl.cli.record_demos import RecordDemosConfig

    with pytest.raises(ValueError, match="n:"):
        RecordDemosConfig(n=0)
    with pytest.raises(ValueError, match="max_episodes"):
        RecordDemosConfig(max_episodes=-1)
    with pytest.raises(ValueError, match="noise"):
        RecordDemosConfig(noise=-0.1)


# ----------------------------------------------------------------------------- a person at a terminal (real pty)


class LineReader:
    """A child's stdout lines as they come. A thread reads them: select() on the pipe would miss lines already
    in the text wrapper's buffer (two lines printed together arrive in one read)."""

    def __init__(self, proc):
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put("")  # end of output

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"never saw {text!r}; output:\n{''.join(self.lines)}\n{self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def rest(self, timeout: float = 30.0) -> str:
        """The output after the lines seen so far, up to the child's end of output."""
        rest = []
        while line := self._queue.get(timeout=timeout):
            rest.append(line)
        self.lines += rest
        return "".join(rest)


def test_keyboard_recording_over_a_pty(tmp_path):
    path = tmp_path / "keys.h5"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serl.cli.record_demos", "PandaPickCube", "--teleop", "keyboard", "--n", "3",
         "--out", str(path), "--no-display", "--overrides", "max_episode_steps=300"],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
    )
    os.close(slave)
    out = LineReader(proc)
    try:
        out.wait_for("episode 1: started")
        os.write(master, b"r")  # up, held for the terminal hold time (~5 steps at 10 Hz)
        time.sleep(0.8)
        os.write(master, b"c")
        time.sleep(0.4)
        os.write(master, b"\r")  # success
        out.wait_for("episode 1: success")
        out.wait_for("episode 2: started")
        os.write(master, b"\r")
        out.wait_for("episode 2: success")
        out.wait_for("episode 3: started")
        os.write(master, b"\x7f")  # backspace: discard the last kept episode
        out.wait_for("discarded episode_000001")
        os.write(master, b"q")
        out.wait_for("kept")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    episodes = list(read_episodes(path))
    assert [e.attrs["name"] for e in episodes] == ["episode_000000"]
    first = episodes[0]
    assert first.success and first.rewards[-1] == 1.0 and first.succeed[-1] and first.terminated[-1]
    assert first.intervened.sum() >= 3 and first.attrs["source"] == "teleop"
    z = first.observations["state"]["tcp_pose"][:, 2]  # relative frame: the reset frame's z points down
    assert z.min() < -0.03  # the arm went up
    assert (first.actions[:, 6] == -1.0).any()  # the close key reached the stored action
    assert len(list(read_episodes(path, include_discarded=True))) == 2


# ----------------------------------------------------------------------------- killed recorders


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_recorder_killed_mid_episode_keeps_finished_episodes(tmp_path, sig):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "serl.cli.record_demos", "PandaPickCube", "--teleop", "scripted", "--n", "20",
         "--out", str(path), "--no-display", "--realtime", "True"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT,
    )
    out = LineReader(proc)
    try:
        out.wait_for("episode 1: success")
        time.sleep(0.7)  # inside episode 2 (about 3 s at 10 Hz)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGINT:
        assert code == 0
        rest = out.rest()
        assert "interrupted" in rest and "kept 1 episode" in rest
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to roll back, nothing incomplete
        episodes = list(read_episodes(path))
    assert len(episodes) == 1 and episodes[0].success
    assert episode_count(path) == 1 and not os.path.exists(journal_path(path))


# ----------------------------------------------------------------------------- keyboard reward


def test_keyboard_reward_space_is_success_on_a_pty():
    from serl.devices.keyboard import TerminalKeyReader
    from serl.envs.keyboard_reward import KeyboardReward

    master, slave = pty.openpty()
    reader = TerminalKeyReader(fd=slave)
    env = KeyboardReward(gym.make("Pendulum-v1"), reader)
    try:
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
        assert reward == 0.0 and not terminated and not info["succeed"]
        os.write(master, b" ")
        deadline = time.monotonic() + 3
        while not reader.events and time.monotonic() < deadline:
            time.sleep(0.01)
        _, reward, terminated, truncated, info = env.step(np.zeros(1, np.float32))
        assert reward == 1.0 and terminated and info["succeed"] and info["reward_source"] == "keyboard"
        env.reset()
        os.write(master, b"n")
        deadline = time.monotonic() + 3
        while not reader.events and time.monotonic() < deadline:
            time.sleep(0.01)
        _, reward, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        assert truncated and not terminated and reward == 0.0
    finally:
        env.close()
        os.close(master)
        os.close(slave)


def test_recorder_controls_count_held_pad_buttons_once_and_every_key_press():
    from serl.cli.record_demos import Controls

    pad = Controls("gamepad", None)
    assert pad.keys({"start": True}) == {"start"}
    assert pad.keys({"start": True}) == set()  # still held: not a second success
    assert pad.keys({}) == set()
    assert pad.keys({"start": True, "back": True}) == {"start", "back"}
    keyboard = Controls("scripted", None)
    assert keyboard.keys({"enter": True}) == {"enter"}
    assert keyboard.keys({"enter": True}) == {"enter"}  # a keyboard reports each press once: both count


def test_serl_train_demo_noise_reaches_the_scripted_expert(tmp_path):
    from serl.cli.train import TrainConfig, _record_demos
    from serl.runtime.config import EnvConfig

    def actions(noise):
        path = _record_demos(TrainConfig(num_demos=1, demo_noise=noise), EnvConfig(), tmp_path / f"noise{noise}.h5")
        (episode,) = read_episodes(path)
        return episode.actions

    quiet, noisy = actions(0.0), actions(0.5)
    steps = min(len(quiet), len(noisy))
    # same seed, same cube: only the injected noise differs, and it shows in the approach's xy actions
    assert np.abs(noisy[:steps, :2] - quiet[:steps, :2]).mean() > 0.1
