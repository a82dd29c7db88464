"""InterventionWrapper on real envs (gymnasium Pendulum, the MuJoCo twin) with a scripted teleop."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from serl.data.episodes import EpisodeRecorder
from serl.devices import ScriptedTeleop, TeleopCommand
from serl.envs.intervention import InterventionWrapper

pytest.importorskip("mujoco")


def idle():
    return TeleopCommand.idle()


def test_policy_action_replaced_exactly_when_input_is_non_idle():
    env = gym.make("Pendulum-v1")  # action Box [-2, 2]: the twist is scaled into the bounds
    teleop = ScriptedTeleop([idle(), TeleopCommand.move([0.5, 0, 0, 0, 0, 0]), idle(),
                             TeleopCommand(np.array([0.01, 0, 0, 0, 0, 0]), active=False)])
    env = InterventionWrapper(env, teleop)
    env.reset(seed=0)
    policy = np.array([-1.5], dtype=np.float32)
    flags, executed, teleop_actions = [], [], []
    for _ in range(4):
        _, _, _, _, info = env.step(policy)
        flags.append(info["intervened"])
        executed.append(float(info["executed_action"][0]))
        teleop_actions.append(info["teleop_action"])
    assert flags == [False, True, False, False]
    assert executed == [-1.5, 1.0, -1.5, -1.5]
    assert teleop_actions[0] is None and float(teleop_actions[1][0]) == 1.0 and teleop_actions[2] is None
    assert info["intervention_rate"] == pytest.approx(0.25)
    _, info = env.reset()
    assert info["intervened"] is False and env.episode_interventions == 0


def test_non_box_action_space_is_rejected():
    with pytest.raises(ValueError, match="Box"):
        InterventionWrapper(gym.make("CartPole-v1"), ScriptedTeleop([]))


def test_gripper_mapping_and_policy_gripper_kept_when_idle_is_none():
    env = gym.make("serl/PandaPickCube-v0")
    wrapper = InterventionWrapper(env, ScriptedTeleop([]), gripper_idle=None)
    policy = np.array([0, 0, 0, 0, 0, 0, 0.3])
    close = wrapper.teleop_to_action(TeleopCommand.move(np.zeros(6), "close"), policy)
    assert close[6] == -1.0
    assert wrapper.teleop_to_action(TeleopCommand.move(np.zeros(6), "open"), policy)[6] == 1.0
    assert wrapper.teleop_to_action(TeleopCommand.move(np.ones(6)), policy)[6] == pytest.approx(0.3)
    assert InterventionWrapper(env, ScriptedTeleop([])).teleop_to_action(TeleopCommand.move(np.ones(6)), policy)[6] == 0.0
    env.close()


def test_teleop_drives_the_twin_and_the_recorder_stores_the_human_action():
    import serl.envs  # noqa: F401  (registers the ids)
    from serl.envs.wrappers import default_wrappers

    base = gym.make("serl/PandaPickCube-v0").unwrapped
    env = default_wrappers(base)  # the actor's stack: relative frame, euler, flat state
    moves = [TeleopCommand.move([0, 0, 1, 0, 0, 0])] * 5 + [idle()] * 3 + [TeleopCommand.move([0, 0, 0, 0, 0, 0], "close")]
    env = InterventionWrapper(env, ScriptedTeleop(moves))
    obs, _ = env.reset(seed=1)
    z0 = base.state.tcp_pose[2]
    recorder = EpisodeRecorder()
    recorder.start({"state": {"flat": obs["state"]}})
    policy = np.zeros(7, dtype=np.float32)
    policy[0] = -0.5  # the policy wants -x; the human wants +z
    infos = []
    for _ in range(len(moves)):
        obs, reward, terminated, truncated, info = env.step(policy)
        recorder.add(policy, reward, {"state": {"flat": obs["state"]}}, terminated, truncated, info)
        infos.append(info)
    z_after_human = base.state.tcp_pose[2]
    assert z_after_human > z0 + 0.05  # 5 steps of +z at 2 cm per step (the arm lags the target a little)
    assert [i["intervened"] for i in infos] == [True] * 5 + [False] * 3 + [True]
    assert base.state.gripper_width < 0.079  # the human's close reached the gripper
    episode = recorder.finish()
    # the human's base-frame +z, stored in the policy's frame (the reset pose's frame points down)
    np.testing.assert_allclose(episode.actions[0], [0, 0, -1, 0, 0, 0, 0], atol=0.01)
    np.testing.assert_allclose(episode.actions[5], policy)  # policy's action when idle
    assert episode.actions[8][6] == -1.0
    np.testing.assert_array_equal(episode.intervened, [True] * 5 + [False] * 3 + [True])
    env.close()


@pytest.mark.parametrize(("rotation_actions", "seed"), [(True, 3), (False, 4)])
def test_scripted_expert_in_the_wrapper_solves_pick_cube(rotation_actions, seed):
    from serl.devices import make_teleop
    from serl.envs.tasks import make_sim_env
    from serl.envs.wrappers import QuatToEuler, RelativeFrame

    env = QuatToEuler(RelativeFrame(make_sim_env("PandaPickCube", seed=seed, rotation_actions=rotation_actions)))
    env = InterventionWrapper(env, make_teleop("scripted", env=env, noise=0.1, seed=seed))
    env.reset(seed=seed)
    for _ in range(100):
        _, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
        if terminated or truncated:
            break
    assert info["succeed"] and terminated and reward == 1.0
    assert info["teleop_action"].shape == env.action_space.shape == ((7,) if rotation_actions else (4,))
    env.close()


@pytest.mark.parametrize("frame", ["ee", "base"])
def test_person_steers_in_the_base_frame_whatever_the_action_frame(frame):
    from serl.envs.tasks import make_sim_env

    env = make_sim_env("PandaPickCube", seed=0, action_frame=frame)
    wrapper = InterventionWrapper(env, ScriptedTeleop([TeleopCommand.move([0, 0, 1, 0, 0, 0])] * 4))
    wrapper.reset(seed=0)
    z0 = env.state.tcp_pose[2]
    for _ in range(4):
        wrapper.step(np.zeros(7))
    assert env.state.tcp_pose[2] > z0 + 0.04  # up in the base frame, though the ee frame's z points down
    raw = InterventionWrapper(env, ScriptedTeleop([]), teleop_frame="action")
    action = raw.teleop_to_action(TeleopCommand.move([0, 0, 1, 0, 0, 0]))
    np.testing.assert_allclose(action[:3], [0, 0, 1])  # passed through untouched
    with pytest.raises(ValueError, match="teleop_frame"):
        InterventionWrapper(env, ScriptedTeleop([]), teleop_frame="camera")
    env.close()


def test_translation_only_task_holds_orientation_and_maps_teleop_into_four_entries():
    from serl.envs.tasks import make_sim_env
    from serl.envs.wrappers import QuatToEuler, RelativeFrame

    base = make_sim_env("PandaPickCube", seed=1, rotation_actions=False)
    assert base.action_space.shape == (4,) and base.action_layout.gripper_index == 3
    env = QuatToEuler(RelativeFrame(base))
    twist_then_close = [TeleopCommand.move([1, 0, 0, 0, 0, 1])] * 3 + [TeleopCommand.move([0] * 6, gripper="close")]
    wrapper = InterventionWrapper(env, ScriptedTeleop(twist_then_close))
    wrapper.reset(seed=1)
    start = base.state.tcp_pose.copy()
    rng = np.random.default_rng(0)
    for _ in range(3):  # the person's yaw twist is dropped; +x in the base frame moves the hand +x
        _, _, _, _, info = wrapper.step(rng.uniform(-1, 1, 4))
        assert info["teleop_action"].shape == (4,)
        np.testing.assert_allclose(info["target_pose"][3:], base._held_orientation)
    assert base.state.tcp_pose[0] > start[0] + 0.03
    _, _, _, _, info = wrapper.step(np.zeros(4))
    assert info["teleop_action"][3] == -1.0 and base._gripper_command == 0.0
    for _ in range(10):  # random policy actions cannot turn the hand either
        wrapper.step(rng.uniform(-1, 1, 4))
    from robot_servers.control.pose import orientation_error

    assert np.linalg.norm(orientation_error(base.state.tcp_pose[3:], start[3:])) < 0.05
    wrapper.close()
