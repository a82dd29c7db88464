"""Reset-free relocation on the twin: the scene, the two tasks, their reward and the scripted expert."""

from __future__ import annotations


import numpy as np
import pytest

from robot_servers.backends.base import RobotState
from robot_servers.control.pose import DOWN_QUAT
from robot_servers.twin import models
from serl.devices.scripted import ExpertConfig, ScriptedExpert
from serl.envs.franka_env import FrankaEnv
from serl.envs.intervention import InterventionWrapper
from serl.envs.rewards import RelocateReward, make_reward
from serl.envs.tasks import get_task, make_sim_env, with_overrides

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

A, B = (np.asarray(models.RELOCATE_REGIONS[name]) for name in ("A", "B"))
REST_Z = models.TABLE_TOP + models.CUBE_HALF


def _state(tcp_xyz) -> RobotState:
    return RobotState(tcp_pose=np.array([*tcp_xyz, *DOWN_QUAT]), tcp_vel=np.zeros(6), wrench=np.zeros(6),
                      q=np.zeros(7), dq=np.zeros(7), gripper_width=0.08, target_pose=np.zeros(7))


def _cube(x, y, z=REST_Z):
    return {"cube": np.array([x, y, z, 0, 0, 0, 1.0])}


def test_reward_success_needs_the_cube_placed_inside_the_goal():
    reward = make_reward(get_task("PandaRelocateFw"))
    assert isinstance(reward, RelocateReward) and reward.goal_xy == tuple(B)
    assert make_reward(get_task("PandaRelocateBw")).goal_xy == tuple(A)
    far = _state([0.5, 0.0, 0.3])
    assert reward(_cube(B[0] + 0.039, B[1]), far) == (1.0, True)
    assert reward(_cube(B[0] + 0.03, B[1] - 0.03), far) == (0.0, False)  # 4.2 cm off centre
    assert reward(_cube(B[0], B[1], REST_Z + 0.03), far) == (0.0, False)  # held above the goal
    assert reward(_cube(*A), far) == (0.0, False)


def test_shaped_reward_potentials_by_hand():
    reward = make_reward(with_overrides(get_task("PandaRelocateFw"), reward_shaping=True, shaping_discount=0.9))
    assert reward.shaping and reward.span == pytest.approx(0.12)
    # hand 5 cm above the cube in A: reach 1 - 0.05 / 0.25 = 0.8, carry 1 - 0.12 / 0.12 = 0 → phi 0.4
    assert reward.shaping_potential(_cube(*A), _state([A[0], A[1], REST_Z + 0.05])) == pytest.approx(0.4)
    reward.reset(_cube(*A), _state([A[0], A[1], REST_Z + 0.05]))
    # cube carried half way, held at the TCP: reach 1, carry 0.5 → phi 0.75; reward 0.9 * 0.75 - 0.4
    held = _cube(0.5, 0.0, REST_Z + 0.04)
    assert reward(held, _state(held["cube"][:3]))[0] == pytest.approx(0.9 * 0.75 - 0.4)
    # placed in B: sparse 1, phi 0 → 1 + 0 - 0.75
    assert reward(_cube(*B), _state([B[0], B[1], REST_Z])) == (pytest.approx(0.25), True)


def test_scene_has_visual_regions_and_the_cube_starts_in_a():
    mjcf = models.build_mjcf("panda", "relocate")
    for name in ("A", "B"):
        assert f'name="region_{name}"' in mjcf
    from robot_servers.backends.twin import TwinBackend, TwinConfig

    twin = TwinBackend(TwinConfig(scene="relocate", cameras=(), seed=3))
    try:
        for name in ("region_A", "region_B"):
            geom = twin.model.geom(name)
            assert geom.contype == 0 and geom.conaffinity == 0
            assert geom.size[0] == pytest.approx(models.REGION_RADIUS)
        cube = twin.scene["cube"]
        assert np.linalg.norm(cube[:2] - A) <= 0.015 and cube[2] == pytest.approx(REST_Z, abs=1e-3)
        twin.reset_scene(7, region="B")
        first = twin.scene["cube"].copy()
        assert np.linalg.norm(first[:2] - B) <= 0.015
        twin.reset_scene(7, region="B")
        np.testing.assert_allclose(twin.scene["cube"], first)
        with pytest.raises(ValueError, match="region"):
            twin.reset_scene(0, region="C")
    finally:
        twin.close()


def _drive(driver, steps=100):
    for step in range(1, steps + 1):
        _, _, terminated, truncated, info = driver.step(np.zeros(7, np.float32))
        if terminated or truncated:
            return bool(info["succeed"]), step
    return False, steps


def test_expert_alternates_forward_and_backward_without_scene_resets():
    forward = make_sim_env("PandaRelocateFw", seed=0)
    task = get_task("PandaRelocateBw")
    backward = FrankaEnv(forward.client, task, reward_fn=make_reward(task))

    def teleported(q=None):
        raise AssertionError("a relocation reset must not teleport the arm")

    forward.client.reset_robot = teleported
    drivers = [InterventionWrapper(env, ScriptedExpert(env, ExpertConfig(noise=0.1, seed=i)))
               for i, env in enumerate((forward, backward))]
    successes = [[], []]
    try:
        for episode in range(6):
            for direction, driver in enumerate(drivers):
                before = forward.client.scene()["cube"][:3].copy()
                driver.reset(seed=10 * episode + direction)
                after = forward.client.scene()["cube"][:3]
                assert np.linalg.norm(after - before) < 0.01, "the reset moved the cube"
                assert forward.read_state().gripper_width > 0.07  # the hand opened before leaving
                successes[direction].append(_drive(driver)[0])
        assert np.mean(successes[0]) >= 0.9 and np.mean(successes[1]) >= 0.9, successes
    finally:
        forward.close()


def test_expert_needs_a_goal():
    env = make_sim_env("PandaRelocateFw", seed=0, reward="keyboard")
    try:
        with pytest.raises(ValueError, match="goal_xy"):
            ScriptedExpert(env)
    finally:
        env.close()
