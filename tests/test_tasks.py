"""Task registry, gymnasium registration, the two sim tasks (solvable by a script) and their rewards."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import serl.envs  # noqa: F401  (registers the gymnasium ids)
from robot_servers.control.pose import DOWN_QUAT, orientation_error, quat_multiply, quat_to_euler, rotvec_to_quat
from serl.envs.rewards import PegInsertionReward, PickCubeReward, make_reward, peg_tip
from serl.envs.tasks import PANDA_PICK_CUBE, get_task, list_tasks, register_task, with_overrides

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_importing_serl_envs_does_not_import_mujoco():
    code = "import sys, serl.envs, serl.envs.tasks, serl.envs.wrappers; print('mujoco' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry():
    assert {"PandaPickCube", "PandaPegInsertion"} <= set(list_tasks())
    assert get_task("PandaPickCube") is PANDA_PICK_CUBE
    with pytest.raises(ValueError, match="unknown task 'PandaStackCubes'"):
        get_task("PandaStackCubes")
    with pytest.raises(ValueError, match="already registered"):
        register_task(PANDA_PICK_CUBE)
    custom = dataclasses.replace(PANDA_PICK_CUBE, name="TestLiftHigher")
    register_task(custom, reward=lambda task: PickCubeReward(lift_height=0.2))
    assert make_reward(get_task("TestLiftHigher")).lift_height == 0.2
    assert make_reward(with_overrides(custom, reward="classifier")) is None
    with pytest.raises(ValueError, match="unknown TaskConfig fields \\['episode_length'\\]"):
        with_overrides(PANDA_PICK_CUBE, episode_length=5)
    with pytest.raises(ValueError, match="no ground-truth reward"):
        make_reward(dataclasses.replace(PANDA_PICK_CUBE, name="Unregistered", scene="empty"))


pytest.importorskip("robot_servers.backends.twin")  # the rest needs the twin (sets MUJOCO_GL first)


@pytest.mark.parametrize("env_id", sorted(serl.envs.SIM_ENV_IDS) + sorted(serl.envs.TWO_ARM_ENV_IDS))
def test_registered_envs_pass_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    if "Pixels" in env_id:
        assert set(obs["images"]) == {"wrist", "front"}
        assert obs["images"]["front"].shape == (128, 128, 3)
        assert not any(key.endswith("_pose") and key != "tcp_pose" for key in obs["state"])  # no privileged state
    else:
        assert "images" not in obs
    env.close()


def _pick_action(obs, phase):
    state = obs["state"]
    tcp, cube = state["tcp_pose"][:3].astype(float), state["cube_pose"][:3].astype(float)
    goal, grip = {
        "above": (cube + [0, 0, 0.08], 1.0),
        "descend": (cube, 1.0),
        "close": (tcp, -1.0),
        "lift": (np.array([tcp[0], tcp[1], 0.25]), -1.0),
    }[phase]
    return np.concatenate([np.clip((goal - tcp) / 0.02, -1, 1), [0, 0, 0, grip]])


def test_scripted_grasp_lifts_the_cube():
    env = gym.make("serl/PandaPickCube-v0")
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        phase, closing = "above", 0
        for _ in range(60):
            tcp, cube = obs["state"]["tcp_pose"][:3], obs["state"]["cube_pose"][:3]
            if phase == "above" and np.linalg.norm(tcp[:2] - cube[:2]) < 0.005 and abs(tcp[2] - cube[2] - 0.08) < 0.01:
                phase = "descend"
            elif phase == "descend" and abs(tcp[2] - cube[2]) < 0.005:
                phase = "close"
            elif phase == "close":
                closing += 1
                phase = "lift" if closing > 6 else phase
            obs, reward, terminated, truncated, info = env.step(_pick_action(obs, phase))
            if terminated or truncated:
                break
        assert terminated and reward == 1.0 and info["succeed"], f"seed {seed}: ended in phase {phase}"
        assert obs["state"]["cube_pose"][2] >= 0.12
    env.close()


def test_scripted_insertion_succeeds():
    env = gym.make("serl/PandaPegInsertion-v0")
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        for _ in range(60):
            tcp, hole = obs["state"]["tcp_pose"].astype(float), obs["state"]["hole_pose"].astype(float)
            desired = quat_multiply(rotvec_to_quat([0, 0, quat_to_euler(hole[3:])[2]]), DOWN_QUAT)
            rot_err = -orientation_error(tcp[3:], desired)
            xy_err = hole[:2] - tcp[:2]
            aligned = np.linalg.norm(xy_err) < 0.002 and np.linalg.norm(rot_err) < 0.03
            action = np.concatenate([np.clip(xy_err / 0.01, -1, 1), [-1.0 if aligned else 0.0],
                                     np.clip(rot_err / 0.05, -1, 1)])
            obs, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert terminated and reward == 1.0, f"seed {seed}"
    env.close()


def test_dense_pick_reward_rises_as_the_hand_approaches():
    env = gym.make("serl/PandaPickCube-v0", dense_reward=True)
    obs, _ = env.reset(seed=0)
    rewards = []
    for _ in range(6):
        obs, reward, *_ = env.step(_pick_action(obs, "above"))
        rewards.append(reward)
    assert 0.0 < rewards[0] < rewards[-1] < 0.3  # reaching alone is worth at most 0.3
    env.close()


def test_reward_functions_on_known_scenes():
    from robot_servers.backends.base import RobotState

    state = RobotState(tcp_pose=np.array([0.5, 0, 0.02, *DOWN_QUAT]), tcp_vel=np.zeros(6), wrench=np.zeros(6),
                       q=np.zeros(7), dq=np.zeros(7), gripper_width=0.04, target_pose=np.zeros(7))
    pick = PickCubeReward(dense=True)
    pick.reset({"cube": np.array([0.5, 0, 0.02, 0, 0, 0, 1])}, state)
    assert pick({"cube": np.array([0.5, 0, 0.119, 0, 0, 0, 1])}, state)[1] is False
    reward, success = pick({"cube": np.array([0.5, 0, 0.121, 0, 0, 0, 1])}, state)
    assert success and reward == pytest.approx(0.3 * np.exp(-20 * 0.101) + 0.7)

    hole = np.array([0.55, 0.0, 0.0, 0, 0, 0, 1])
    upside_down = DOWN_QUAT  # the peg sits in the hand with the hand's orientation; either end may be lowest
    peg = lambda x, z: np.array([x, 0.0, z, *upside_down])  # noqa: E731
    np.testing.assert_allclose(peg_tip(peg(0.55, 0.065)), [0.55, 0, 0.02])
    sparse = PegInsertionReward()
    assert sparse({"hole": hole, "peg": peg(0.55, 0.064)}, state) == (1.0, True)
    assert sparse({"hole": hole, "peg": peg(0.55, 0.070)}, state) == (0.0, False)  # only 15 mm in
    assert sparse({"hole": hole, "peg": peg(0.56, 0.064)}, state) == (0.0, False)  # off centre
    dense = PegInsertionReward(dense=True)
    assert dense({"hole": hole, "peg": peg(0.55, 0.10)}, state)[0] < dense({"hole": hole, "peg": peg(0.55, 0.08)}, state)[0]


def test_fr3_and_overrides_through_gym_make():
    env = gym.make("serl/PandaPickCube-v0", robot="fr3", max_episode_steps=2, action_scale=(0.01, 0.05, 1.0))
    assert env.unwrapped.task.robot == "fr3"
    env.reset(seed=0)
    env.step(np.zeros(7))
    assert env.step(np.zeros(7))[3]  # truncated at the overridden length
    env.close()
    wrapped = gym.make("serl/PandaPickCubePixels-v0", wrap=True)
    obs, _ = wrapped.reset(seed=0)
    assert set(obs) == {"state", "wrist", "front"} and obs["state"].ndim == 1
    wrapped.close()
