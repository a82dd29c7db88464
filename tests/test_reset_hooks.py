"""Reset hooks on the twin: reset pose with randomisation and impedance switching, periodic joint
reset, scene reset, wait-for-human on a pseudo-terminal, and the hook registry."""

from __future__ import annotations

import io
import os
import pty
import threading
import time

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from robot_servers.backends.base import ImpedanceParams  # noqa: E402
from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.control.pose import quat_to_euler, quat_multiply, quat_conjugate  # noqa: E402
from serl.envs.franka_env import FrankaEnv  # noqa: E402
from serl.envs.reset_hooks import (  # noqa: E402
    GoToResetPose,
    JointReset,
    SceneReset,
    WaitForHuman,
    build_hook,
    build_hooks,
    interpolate_pose,
    register_hook,
)
from serl.envs.robot_client import LocalRobot  # noqa: E402
from serl.envs.task_config import ResetHookSpec  # noqa: E402
from serl.envs.tasks import get_task, make_sim_env, with_overrides  # noqa: E402


class RecordingRobot(LocalRobot):
    """The real twin underneath; records the impedance and target calls the hooks make."""

    def __init__(self, backend):
        super().__init__(backend)
        self.calls: list[tuple[str, object]] = []

    def set_impedance(self, params):
        self.calls.append(("impedance", params))
        super().set_impedance(params)

    def set_target(self, pose, gripper=None):
        self.calls.append(("target", np.asarray(pose).copy()))
        super().set_target(pose, gripper)

    def joint_reset(self, q=None, duration=3.0):
        self.calls.append(("joint_reset", duration))
        super().joint_reset(q, duration)


def _env(hooks, **overrides):
    task = with_overrides(get_task("PandaPickCube"), **overrides)
    client = RecordingRobot(TwinBackend(TwinConfig(scene="pick_cube", cameras=(), lockstep=True)))
    return FrankaEnv(client, task, hooks=hooks), client


def test_interpolate_pose_endpoints_and_midpoint():
    start = np.array([0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])
    yaw = np.array([0.0, 0.0, np.sin(0.25), np.cos(0.25)])  # 0.5 rad about z
    goal = np.concatenate([[0.6, 0.2, 0.1], quat_multiply(yaw, start[3:])])
    np.testing.assert_allclose(interpolate_pose(start, goal, 0.0), start, atol=1e-12)
    np.testing.assert_allclose(interpolate_pose(start, goal, 1.0), goal, atol=1e-12)
    mid = interpolate_pose(start, goal, 0.5)
    np.testing.assert_allclose(mid[:3], [0.5, 0.1, 0.2])
    half_turn = quat_to_euler(quat_multiply(mid[3:], quat_conjugate(start[3:])))
    np.testing.assert_allclose(half_turn, [0, 0, 0.25], atol=1e-12)


def test_go_to_reset_pose_randomises_moves_at_control_rate_and_switches_impedance():
    precision = ImpedanceParams(translational_stiffness=(3000.0,) * 3)
    env, client = _env([GoToResetPose(duration=1.0, settle=0.5)], reset_xy_range=0.03, reset_yaw_range=0.2,
                       precision=precision)
    reached = []
    for seed in (0, 1):
        client.calls.clear()
        env.reset(seed=seed)
        kinds = [kind for kind, _ in client.calls]
        assert kinds[0] == "impedance" and client.calls[0][1] is precision
        assert kinds[-1] == "impedance" and client.calls[-1][1] is env.task.compliance
        targets = [value for kind, value in client.calls if kind == "target"]
        assert len(targets) == 10  # 1 s at 10 Hz
        goal = targets[-1]
        offset = goal[:2] - np.asarray(env.task.reset_pose[:2])
        assert np.all(np.abs(offset) <= 0.03) and np.linalg.norm(offset) > 1e-4
        yaw = quat_to_euler(quat_multiply(goal[3:], quat_conjugate(np.asarray(env.task.reset_pose[3:]))))[2]
        assert 1e-4 < abs(yaw) <= 0.2
        # the arm settles at the goal under the precision gains
        assert np.linalg.norm(env.state.tcp_pose[:3] - goal[:3]) < 0.005
        reached.append(goal)
    assert not np.allclose(reached[0], reached[1])
    env.reset(seed=0)
    again = [v for k, v in client.calls if k == "target"][-1]
    np.testing.assert_allclose(again[:3], reached[0][:3])
    assert abs(np.dot(again[3:], reached[0][3:])) == pytest.approx(1.0)  # same rotation (q ≡ −q)
    env.close()


def test_joint_reset_every_n_episodes():
    env, client = _env([JointReset(period=2, duration=1.0)])
    home = env.client.backend.home_q
    did_reset = []
    for episode in range(4):
        client.calls.clear()
        env.reset(seed=episode)
        did_reset.append(any(kind == "joint_reset" for kind, _ in client.calls))
        if did_reset[-1]:
            np.testing.assert_allclose(env.client.backend.state().q, home, atol=1e-3)
        for _ in range(5):
            env.step(np.array([1.0, 1.0, -1.0, 0, 0, 0, 0]))
        assert np.max(np.abs(env.client.backend.state().q - home)) > 0.01
    assert did_reset == [True, False, True, False]
    env.close()


def test_task_joint_reset_period_adds_a_joint_reset_hook():
    task = with_overrides(get_task("PandaPickCube"), joint_reset_period=5)
    hooks = build_hooks(task)
    assert isinstance(hooks[0], JointReset)
    assert len(hooks) == len(task.reset_hooks) + 1


def test_scene_reset_follows_the_env_seed():
    env, _ = _env([SceneReset()])
    poses = {}
    for seed in (4, 5, 4):
        env.reset(seed=seed)
        poses.setdefault(seed, []).append(env.client.scene()["cube"].copy())
    np.testing.assert_array_equal(poses[4][0], poses[4][1])
    assert not np.allclose(poses[4][0][:2], poses[5][0][:2])
    env.close()


def test_sim_task_resets_put_objects_and_arm_back():
    env = make_sim_env("PandaPickCube", seed=0)
    env.reset(seed=11)
    first = env.client.scene()["cube"].copy()
    for _ in range(10):  # knock things about
        env.step(np.array([0.0, 0.0, -1.0, 0, 0, 0, -1.0]))
    env.reset(seed=11)
    np.testing.assert_allclose(env.client.scene()["cube"], first, atol=1e-6)
    assert env.state.gripper_width > 0.075  # opened by the reset
    env.close()


def test_wait_for_human_blocks_until_enter_on_a_terminal():
    master, slave = pty.openpty()
    terminal = os.fdopen(slave, "r")
    output = io.StringIO()
    hook = WaitForHuman(prompt="Put the cube back", input_stream=terminal, output_stream=output)
    threading.Timer(0.3, lambda: os.write(master, b"\n")).start()
    start = time.monotonic()
    hook(None, 3, np.random.default_rng(0))
    assert time.monotonic() - start >= 0.25
    assert "[episode 3] Put the cube back" in output.getvalue()
    terminal.close()
    os.close(master)


def test_wait_for_human_fails_clearly_without_input():
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    with os.fdopen(read_fd, "r") as closed_input:
        hook = WaitForHuman(input_stream=closed_input, output_stream=io.StringIO())
        with pytest.raises(RuntimeError, match="standard input is closed"):
            hook(None, 0, np.random.default_rng(0))


def test_wait_for_human_inside_env_reset():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"\n")
    with os.fdopen(read_fd, "r") as stream:
        env, _ = _env([WaitForHuman(input_stream=stream, output_stream=io.StringIO())])
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        env.close()
    os.close(write_fd)


def test_hook_registry_builds_and_rejects():
    hook = build_hook(ResetHookSpec("go_to_reset_pose", (("duration", 2.0), ("gripper", 0.08))))
    assert hook == GoToResetPose(duration=2.0, gripper=0.08)
    with pytest.raises(ValueError, match="unknown reset hook 'teleport'"):
        build_hook(ResetHookSpec("teleport"))
    with pytest.raises(ValueError, match="options for 'joint_reset'.*speed"):
        build_hook(ResetHookSpec("joint_reset", (("speed", 1.0),)))
    with pytest.raises(ValueError, match="already registered"):
        register_hook("scene_reset", lambda: None)

    calls = []
    register_hook("test_record_episode", lambda tag="x": (lambda env, i, rng: calls.append((tag, i))))
    task = with_overrides(get_task("PandaPickCube"), reset_hooks=(ResetHookSpec("test_record_episode", (("tag", "a"),)),))
    env = FrankaEnv(LocalRobot(TwinBackend(TwinConfig(scene="pick_cube", cameras=()))), task)
    env.reset(seed=0)
    env.reset()
    assert calls == [("a", 0), ("a", 1)]
    env.close()


class RealArmLike(RecordingRobot):
    """A client that cannot teleport the arm, as on real hardware."""

    def reset_robot(self, q=None):
        raise NotImplementedError("no teleport on a real arm")


def test_reset_robot_teleports_the_twin_and_falls_back_to_a_joint_reset():
    env = make_sim_env("PandaPickCube", seed=0)
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.array([1.0, 0, -1.0, 0, 0, 0, -1.0]))
    build_hook(ResetHookSpec("reset_robot"))(env, 1, np.random.default_rng(0))
    np.testing.assert_array_equal(env.client.backend.state().q, env.client.backend.home_q)
    env.close()

    task = get_task("PandaPickCube")
    client = RealArmLike(TwinBackend(TwinConfig(scene="pick_cube", cameras=(), lockstep=True)))
    env = FrankaEnv(client, task, hooks=[build_hook(ResetHookSpec("reset_robot"))])
    client.set_gripper(0.0)
    client.advance(1.0)
    assert client.state().gripper_width < 0.01
    env.reset(seed=0)
    assert [kind for kind, _ in client.calls] == ["joint_reset"]
    assert env.client.backend.state().gripper_width > 0.07  # opened, as the teleport would
    env.close()
