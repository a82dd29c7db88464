"""DualFrankaEnv over two twins: both arms follow their halves of one action in the same period; a wrong-sized
action or a NaN on one arm moves neither; over HTTP to two real-time robot servers the arms' targets are
acknowledged within a few milliseconds of each other, and a server that goes away is named while the other arm
holds its last target."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from robot_servers.backends.twin import TwinBackend, TwinConfig  # noqa: E402
from robot_servers.http import ServerConfig, create_app  # noqa: E402
from robot_servers.serve import ServerThread  # noqa: E402
from serl.envs.dual_franka_env import DualFrankaEnv  # noqa: E402
from serl.envs.franka_env import FrankaEnv, RobotClientError  # noqa: E402
from serl.envs.http_client import HttpRobotClient  # noqa: E402
from serl.envs.tasks import get_task, make_sim_env, with_overrides  # noqa: E402

TASK = {"rotation_actions": False, "max_episode_steps": 40}  # actions: xyz + gripper per arm


def _pair(**overrides) -> DualFrankaEnv:
    return DualFrankaEnv(make_sim_env("PandaPickCube", seed=0, **{**TASK, **overrides}),
                         make_sim_env("PandaPickCube", seed=1, **{**TASK, **overrides}))


def test_both_arms_follow_their_half_of_one_action_and_share_the_clock():
    env = _pair(camera_size=32, cameras=get_task("PandaPickCube", pixels=True).cameras)
    obs, _ = env.reset(seed=3)
    assert env.action_space.shape == (8,)
    assert {"left/tcp_pose", "right/tcp_pose", "left/gripper_width"} <= set(obs["state"])
    assert set(obs["images"]) == {"left/wrist", "left/front", "right/wrist", "right/front"}
    start = {arm: obs["state"][f"{arm}/tcp_pose"][:3].copy() for arm in ("left", "right")}
    times = [arm.state.timestamp for arm in env.arms.values()]
    for _ in range(10):
        obs, reward, terminated, truncated, info = env.step([1.0, 0, 0, 0, 0, -1.0, 0, 0])
    moved = {arm: obs["state"][f"{arm}/tcp_pose"][:3] - start[arm] for arm in ("left", "right")}
    assert moved["left"][0] > 0.05 and abs(moved["left"][1]) < 0.01  # +x only
    assert moved["right"][1] < -0.05 and abs(moved["right"][0]) < 0.01  # -y only
    assert [arm.state.timestamp - t for arm, t in zip(env.arms.values(), times)] == pytest.approx([1.0, 1.0])
    assert set(info) >= {"left", "right", "succeed"} and not terminated
    env.close()


@pytest.mark.parametrize("action, arm", [(np.zeros(7), None), (np.zeros(9), None),
                                         ([0, 0, 0, 0, 0.5, 0, float("nan"), 0], "right"),
                                         ([float("inf"), 0, 0, 0, 0, 0, 0, 0], "left")])
def test_a_bad_action_moves_neither_arm(action, arm):
    env = _pair()
    env.reset(seed=0)
    before = {name: arm_env.client.state().target_pose.copy() for name, arm_env in env.arms.items()}
    with pytest.raises(ValueError, match=f"{arm} arm: action: entries" if arm else r"expected shape \(8,\)"):
        env.step(action)
    for name, arm_env in env.arms.items():
        arm_env.wait_period()
        np.testing.assert_array_equal(arm_env.client.state().target_pose, before[name])
    env.step(np.zeros(8))  # and the env goes on
    env.close()


@pytest.fixture()
def two_servers():
    backends, servers = [], []
    for seed in (0, 1):
        backend = TwinBackend(TwinConfig(scene="pick_cube", lockstep=False, cameras=(), seed=seed))
        backends.append(backend)
        servers.append(ServerThread(create_app(backend, {}, ServerConfig())).start())
    yield backends, servers
    for server in servers:
        server.stop()
    for backend in backends:
        backend.close()


@pytest.mark.realtime_twin
def test_real_time_targets_land_together_and_a_lost_server_is_named_while_the_other_arm_holds(two_servers):
    backends, servers = two_servers
    task = with_overrides(get_task("PandaPickCube"), scene_objects=(), reset_hooks=(), **TASK)
    arms = [FrankaEnv(HttpRobotClient(server.url), task, reward_fn=None) for server in servers]
    env = DualFrankaEnv(*arms)
    env.reset(seed=0)
    for _ in range(20):
        env.step([0, 0, 0.3, 0, 0, 0, 0.3, 0])
    skews = np.array(env.command_skews)
    assert len(skews) == 20
    # loose for a loaded 2-core machine; benchmarks/dual_arm.py measures the figure (p99 <= 2 ms)
    assert np.median(skews) < 0.02, skews
    servers[1].stop()
    base = env.arms["left"].state.tcp_pose[2]  # what the left arm's half of the next step starts from
    with pytest.raises(RobotClientError, match="right arm: robot client failed"):
        env.step([0, 0, -0.3, 0, 0, 0, -0.3, 0])
    # the left arm took its half of that step (6 mm down; this server has no box to clip it) ...
    assert backends[0].state().target_pose[2] == pytest.approx(base - 0.3 * task.action_scale[0], abs=1e-6)
    # ... and hears nothing after it: its server's watchdog holds it where it is
    left = env.arms["left"].client
    deadline = time.monotonic() + 10.0
    while not left.health()["watchdog"]["holding"]:
        assert time.monotonic() < deadline, "the left arm's watchdog never held it"
        time.sleep(0.05)
    env.close()
