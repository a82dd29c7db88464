"""FrankaEnv on the MuJoCo twin (in-process, lockstep): episodes, determinism, frames, safety, bad input, timing."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from robot_servers.limits import MAX_GRIPPER_WIDTH  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.pose import quat_to_rotvec, quat_multiply, quat_conjugate, rotate  # noqa: E402
from serl.envs.franka_env import FrankaEnv, RobotClientError  # noqa: E402
from serl.envs.robot_client import LocalRobot  # noqa: E402
from serl.envs.rewards import make_reward  # noqa: E402
from serl.envs.tasks import get_task, make_sim_env, with_overrides  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_pick_cube_episode_runs_to_truncation():
    env = make_sim_env("PandaPickCube", seed=0, max_episode_steps=8)
    obs, info = env.reset()
    assert env.observation_space.contains(obs)
    assert info == {"succeed": False, "intervened": False, "episode_index": 0}
    assert set(obs["state"]) == {"tcp_pose", "tcp_vel", "wrench", "gripper_width", "cube_pose"}
    truncated = False
    for step in range(8):
        assert not truncated
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert reward == 0.0 and not terminated
        assert info["intervened"] is False and info["succeed"] is False
        assert info["control_period_error"] == 0.0 and info["overruns"] == 0
    assert truncated
    # the twin advanced exactly one control period per step
    assert env.state.timestamp == pytest.approx(env.client.backend.state().timestamp)
    env.close()


def _rollout(seed: int, steps: int = 12, pixels: bool = False):
    env = make_sim_env("PandaPickCube", pixels=pixels, seed=seed)
    rng = np.random.default_rng(123)
    observations = [env.reset(seed=seed)[0]]
    for _ in range(steps):
        observations.append(env.step(rng.uniform(-1, 1, 7))[0])
    env.close()
    return observations


def _flat(obs) -> list[np.ndarray]:
    out = [obs["state"][k] for k in sorted(obs["state"])]
    out += [obs["images"][k] for k in sorted(obs.get("images", {}))]
    return out


def test_identical_seeds_give_identical_observations():
    first, second = _rollout(seed=7), _rollout(seed=7)
    for a, b in zip(first, second):
        for x, y in zip(_flat(a), _flat(b)):
            np.testing.assert_array_equal(x, y)
    other = _rollout(seed=8, steps=0)
    assert not np.array_equal(other[0]["state"]["cube_pose"], first[0]["state"]["cube_pose"])


def test_identical_seeds_give_identical_images():
    first, second = _rollout(seed=3, steps=3, pixels=True), _rollout(seed=3, steps=3, pixels=True)
    for a, b in zip(first, second):
        for x, y in zip(_flat(a), _flat(b)):
            np.testing.assert_array_equal(x, y)
    assert first[0]["images"]["wrist"].shape == (128, 128, 3)
    assert first[0]["images"]["front"].std() > 1.0  # a real rendering, not a blank frame


@pytest.mark.parametrize("frame", ["base", "ee"])
def test_action_frames(frame):
    env = make_sim_env("PandaPickCube", seed=0, action_frame=frame, reset_xy_range=0.0)
    env.reset()
    pose = env.state.tcp_pose.copy()
    _, _, _, _, info = env.step(np.array([0, 1.0, 0, 0, 0, 0, 0]))
    moved = info["target_pose"][:3] - pose[:3]
    scale = env.task.action_scale[0]
    expected = [0, scale, 0] if frame == "base" else rotate(pose[3:], [0, scale, 0])
    np.testing.assert_allclose(moved, expected, atol=1e-9)
    if frame == "ee":  # pointing down, the hand's y axis is the base's -y
        assert moved[1] == pytest.approx(-scale)
    # rotation about z, in the chosen frame
    pose = env.state.tcp_pose.copy()
    _, _, _, _, info = env.step(np.array([0, 0, 0, 0, 0, 1.0, 0]))
    delta = quat_to_rotvec(quat_multiply(info["target_pose"][3:], quat_conjugate(pose[3:])))
    rot = env.task.action_scale[1]
    expected = [0, 0, rot] if frame == "base" else rotate(pose[3:], [0, 0, rot])
    np.testing.assert_allclose(delta, expected, atol=1e-6)
    env.close()


def test_safety_box_clips_targets_and_keeps_the_arm_inside():
    env = make_sim_env("PandaPickCube", seed=0)
    env.reset()
    box = env.task.safety_box
    clipped_any = False
    for _ in range(25):
        _, _, _, _, info = env.step(np.array([1.0, 1.0, 1.0, 0, 0, 1.0, 0]))
        clipped_any |= info["safety_clipped"]
        assert box.contains(info["target_pose"], tolerance=1e-9)
    assert clipped_any
    np.testing.assert_allclose(info["target_pose"][:3], box.position_high, atol=1e-9)
    assert box.contains(env.state.tcp_pose, tolerance=0.01)
    env.close()


@pytest.mark.parametrize(
    "action, message",
    [
        (np.full(7, np.nan), "not finite"),
        (np.array([0, 0, np.inf, 0, 0, 0, 0]), "not finite"),
        (np.zeros(6), "shape"),
        (np.zeros((2, 7)), "shape"),
        ("up", "action"),
        (None, "action"),
    ],
)
def test_bad_actions_raise_and_do_not_command_the_robot(action, message):
    env = make_sim_env("PandaPickCube", seed=0)
    env.reset()
    before = env.client.backend.state()
    with pytest.raises(ValueError, match=message) as excinfo:
        env.step(action)
    assert "action" in str(excinfo.value)
    after = env.client.backend.state()
    np.testing.assert_array_equal(before.target_pose, after.target_pose)
    assert after.timestamp == before.timestamp  # no time passed, nothing was sent
    env.step(np.zeros(7))  # the env is still usable
    env.close()


def test_binary_gripper_keeps_its_state_and_sends_only_changes():
    env = make_sim_env("PandaPickCube", seed=0)
    env.reset()
    assert env.state.gripper_width == pytest.approx(MAX_GRIPPER_WIDTH, abs=2e-3)
    changes = []
    for g in (-1.0, 0.0, -0.9, 0.3, -1.0):
        changes.append(env.step(np.array([0, 0, 0, 0, 0, 0, g]))[4]["gripper_changed"])
    assert changes == [True, False, False, False, False]
    assert env.state.gripper_width < 0.04  # closing at the hand's speed, not blocking
    assert env.step(np.array([0, 0, 0, 0, 0, 0, 0.8]))[4]["gripper_changed"]
    for _ in range(8):
        env.step(np.zeros(7))
    assert env.state.gripper_width > 0.07
    env.close()


def test_continuous_and_no_gripper_modes():
    env = make_sim_env("PandaPickCube", seed=0, gripper_mode="continuous")
    env.reset()
    for _ in range(6):
        info = env.step(np.array([0, 0, 0, 0, 0, 0, 0.0]))[4]
    assert env.state.gripper_width == pytest.approx(MAX_GRIPPER_WIDTH / 2, abs=3e-3)
    assert not info["gripper_changed"]  # same width again: nothing re-sent
    env.close()
    env = make_sim_env("PandaPegInsertion", seed=0)
    assert env.action_space.shape == (6,)
    env.reset()
    offset = env.client.scene()["peg"][:3] - env.state.tcp_pose[:3]
    for _ in range(3):
        env.step(np.array([1.0, 0, 1.0, 0, 0, 0]))
    # no gripper command exists: the peg stays in the closed hand as the arm moves
    moved = env.client.scene()["peg"][:3] - env.state.tcp_pose[:3]
    np.testing.assert_allclose(moved, offset, atol=3e-3)
    assert env.state.gripper_width < 0.03
    env.close()


def test_check_env_passes_for_direct_construction():
    task = get_task("PandaPickCube")
    backend = TwinBackend(TwinConfig(scene="pick_cube", cameras=(), lockstep=True))
    env = FrankaEnv(LocalRobot(backend), task, reward_fn=make_reward(task))
    check_env(env, skip_render_check=True)
    env.close()


def _realtime_env(control_hz: float, **kwargs):
    task = with_overrides(get_task("PandaPickCube"), control_hz=control_hz, reset_hooks=())
    backend = TwinBackend(TwinConfig(scene="pick_cube", cameras=(), lockstep=False))
    return FrankaEnv(LocalRobot(backend), task, reward_fn=make_reward(task), **kwargs)


def test_real_time_client_keeps_the_period():
    env = _realtime_env(control_hz=20.0)
    assert not env.client.lockstep
    env.reset(seed=0)
    infos = [env.step(np.zeros(7))[4] for _ in range(15)]
    env.close()
    errors = [info["control_period_error"] for info in infos]
    # loose bounds: two shared cores; benchmarks/env_step.py measures the real figure
    assert abs(float(np.median(errors))) < 0.01
    # drift-free: errors do not accumulate (an overrun restarts the schedule, as the FakeClock test pins down)
    assert infos[-1]["overruns"] > 0 or sum(errors) == pytest.approx(0.0, abs=0.02)


class FakeClock:
    """Deterministic time for the pacing logic (the twin itself runs in real time underneath)."""

    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_drift_free_pacing_and_overruns():
    clock = FakeClock()
    env = _realtime_env(control_hz=10.0, clock=clock, sleep=clock.sleep)
    env.reset(seed=0)
    clock.now += 0.03  # the policy took 30 ms
    info = env.step(np.zeros(7))[4]
    assert clock.sleeps[-1] == pytest.approx(0.07)
    assert info["control_period_error"] == pytest.approx(0.0) and info["overruns"] == 0
    clock.now += 0.25  # a slow policy step: late by 150 ms
    info = env.step(np.zeros(7))[4]
    assert info["overruns"] == 1
    assert info["control_period_error"] == pytest.approx(0.15)
    clock.now += 0.01  # back on time: the schedule restarted from the late tick
    info = env.step(np.zeros(7))[4]
    assert clock.sleeps[-1] == pytest.approx(0.09)
    assert info["overruns"] == 1 and info["control_period_error"] == pytest.approx(0.0)
    env.close()


class DroppingLink(LocalRobot):
    """A LocalRobot whose link can be cut, standing in for a network drop at the client boundary."""

    connected = True
    reconnects = 0

    def state(self):
        if not self.connected:
            raise ConnectionError("connection to the robot was lost")
        return super().state()

    def reconnect(self):
        self.reconnects += 1
        self.connected = True


def test_dropped_connection_raises_clearly_and_reset_reconnects():
    task = get_task("PandaPickCube")
    backend = TwinBackend(TwinConfig(scene="pick_cube", cameras=(), lockstep=True))
    client = DroppingLink(backend)
    env = FrankaEnv(client, task, reward_fn=make_reward(task))
    env.reset(seed=0)
    env.step(np.zeros(7))
    client.connected = False
    with pytest.raises(RobotClientError, match="reset\\(\\) reconnects"):
        env.step(np.zeros(7))
    with pytest.raises(RobotClientError, match="call reset"):
        env.step(np.zeros(7))
    obs, _ = env.reset()
    assert client.reconnects == 1
    assert env.observation_space.contains(obs)
    env.step(np.zeros(7))
    env.close()


def test_bad_state_key_is_rejected():
    task = with_overrides(get_task("PandaPickCube"), state_keys=("tcp_pose", "force"))
    backend = TwinBackend(TwinConfig(scene="pick_cube", cameras=(), lockstep=True))
    with pytest.raises(ValueError, match="state_keys.*force"):
        FrankaEnv(LocalRobot(backend), task)
    backend.close()


def test_render_shows_the_cameras_side_by_side():
    env = make_sim_env("PandaPickCube", pixels=True, seed=0, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (128, 256, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:, :128], obs["images"]["wrist"])
    assert make_sim_env("PandaPickCube", seed=0).render() is None  # no render mode, no cameras
    env.close()
