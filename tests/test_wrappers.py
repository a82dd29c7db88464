"""Each wrapper on the real PandaPickCube twin env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from robot_servers.control.pose import quat_to_euler, relative_pose, rotate  # noqa: E402
from serl.envs.tasks import make_sim_env  # noqa: E402
from serl.envs.wrappers import (  # noqa: E402
    ChunkedActions,
    FlattenState,
    FrameStack,
    GripperPenalty,
    InterventionInfo,
    QuatToEuler,
    RelativeFrame,
    TimeLimit,
    default_wrappers,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class ScriptedTeleop(gym.Wrapper):
    """Stands in for the intervention wrapper (HIL helper's): on chosen steps it replaces the
    action with a base-frame teleop action and reports it, as a SpaceMouse takeover would."""

    def __init__(self, env, takeover_steps: set[int], teleop_action):
        super().__init__(env)
        self.takeover_steps = takeover_steps
        self.teleop_action = np.asarray(teleop_action, dtype=np.float64)
        self.count = 0

    def reset(self, **kwargs):
        self.count = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        takeover = self.count in self.takeover_steps
        self.count += 1
        if takeover:
            action = self.teleop_action
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["intervened"] = takeover
        info["executed_action"] = np.asarray(action, dtype=np.float64).copy()
        if takeover:
            info["teleop_action"] = self.teleop_action.copy()
        return obs, reward, terminated, truncated, info


@pytest.fixture
def env():
    env = make_sim_env("PandaPickCube", seed=0, reset_yaw_range=0.3)
    yield env
    env.close()


def test_relative_frame_observations(env):
    wrapped = RelativeFrame(env)
    obs, _ = wrapped.reset(seed=2)
    reset_pose = wrapped.reset_pose
    np.testing.assert_allclose(obs["state"]["tcp_pose"], [0, 0, 0, 0, 0, 0, 1], atol=1e-6)
    raw = env.state
    np.testing.assert_allclose(obs["state"]["tcp_vel"][:3], _rot(reset_pose).T @ raw.tcp_vel[:3], atol=1e-5)
    np.testing.assert_allclose(obs["state"]["wrench"][3:], _rot(reset_pose).T @ raw.wrench[3:], atol=1e-4)
    cube = env.client.scene()["cube"]
    expected_cube = relative_pose(np.concatenate([cube[:3], reset_pose[3:]]), reset_pose)[:3]
    np.testing.assert_allclose(obs["state"]["cube_pose"][:3], expected_cube, atol=1e-5)
    np.testing.assert_allclose(obs["state"]["cube_pose"][3:], cube[3:], atol=1e-6)  # base-frame orientation
    obs, *_ = wrapped.step(np.zeros(7))
    expected = relative_pose(env.state.tcp_pose, reset_pose)
    np.testing.assert_allclose(obs["state"]["tcp_pose"][:3], expected[:3], atol=1e-6)


def test_relative_frame_moves_an_object_position_like_a_pose():
    env = make_sim_env("PandaPickCube", seed=0, reset_yaw_range=0.3, object_state="position")
    wrapped = RelativeFrame(env)
    obs, _ = wrapped.reset(seed=2)
    assert wrapped.observation_space["state"]["cube_position"].shape == (3,) and "cube_pose" not in obs["state"]
    cube, reset_pose = env.client.scene()["cube"], wrapped.reset_pose
    expected_cube = relative_pose(np.concatenate([cube[:3], reset_pose[3:]]), reset_pose)[:3]
    np.testing.assert_allclose(obs["state"]["cube_position"], expected_cube, atol=1e-5)
    env.close()
    with pytest.raises(ValueError, match="object_state"):
        make_sim_env("PandaPickCube", seed=0, object_state="quaternion")


def _rot(pose):
    from robot_servers.control.pose import quat_to_matrix

    return quat_to_matrix(pose[3:])


def test_relative_frame_actions_and_teleop_conversion(env):
    teleop_base = np.array([0.5, -0.25, 0.0, 0.0, 0.0, 0.0, 0.0])
    wrapped = RelativeFrame(ScriptedTeleop(env, {1}, teleop_base))
    wrapped.reset(seed=5)
    reset_pose = wrapped.reset_pose
    yaw = quat_to_euler(reset_pose[3:])[2]
    assert abs(yaw) > 1e-3  # the reset yaw is randomised, so the frames differ
    before = env.state.tcp_pose.copy()
    _, _, _, _, info = wrapped.step(np.array([1.0, 0, 0, 0, 0, 0, 0]))
    moved = info["target_pose"][:3] - before[:3]
    np.testing.assert_allclose(moved, rotate(reset_pose[3:], [0.02, 0, 0]), atol=1e-9)
    _, _, _, _, info = wrapped.step(np.zeros(7))
    assert info["intervened"]
    # the teleop action comes back in the policy's (reset) frame: mapping it forward gives the base action
    back = info["teleop_action"]
    np.testing.assert_allclose(rotate(reset_pose[3:], back[:3]), teleop_base[:3], atol=1e-9)
    np.testing.assert_allclose(back[6:], teleop_base[6:])
    np.testing.assert_allclose(info["executed_action"], back, atol=1e-12)


def test_relative_frame_passes_ee_actions_through():
    env = make_sim_env("PandaPickCube", seed=0, action_frame="ee", reset_yaw_range=0.3)
    wrapped = RelativeFrame(env)
    wrapped.reset(seed=1)
    before = env.state.tcp_pose.copy()
    _, _, _, _, info = wrapped.step(np.array([1.0, 0, 0, 0, 0, 0, 0]))
    np.testing.assert_allclose(info["target_pose"][:3] - before[:3], rotate(before[3:], [0.02, 0, 0]), atol=1e-9)
    env.close()


def test_quat_to_euler(env):
    wrapped = QuatToEuler(env)
    assert wrapped.observation_space["state"]["tcp_pose"].shape == (6,)
    assert wrapped.observation_space["state"]["cube_pose"].shape == (7,)  # objects keep quaternions
    obs, _ = wrapped.reset(seed=0)
    pose = env.state.tcp_pose
    np.testing.assert_allclose(obs["state"]["tcp_pose"], np.concatenate([pose[:3], quat_to_euler(pose[3:])]),
                               atol=1e-6)
    assert wrapped.observation_space.contains(obs)
    with pytest.raises(ValueError, match="not in the state"):
        QuatToEuler(env, keys=("hand_pose",))


def test_flatten_state_layout_and_images():
    env = make_sim_env("PandaPickCube", pixels=True, seed=0)
    wrapped = FlattenState(QuatToEuler(env))
    layout = wrapped.state_layout
    assert list(layout) == ["tcp_pose", "tcp_vel", "wrench", "gripper_width"]  # task order, not alphabetical
    assert layout["tcp_pose"] == slice(0, 6) and layout["gripper_width"] == slice(18, 19)
    obs, _ = wrapped.reset(seed=0)
    assert set(obs) == {"state", "wrist", "front"}
    assert obs["state"].shape == (19,) and obs["state"].dtype == np.float32
    assert obs["wrist"].shape == (128, 128, 3) and obs["wrist"].dtype == np.uint8
    assert obs["state"][layout["gripper_width"]][0] == pytest.approx(env.state.gripper_width, abs=1e-6)
    named = wrapped.unflatten(obs["state"])
    np.testing.assert_allclose(named["tcp_pose"][:3], env.state.tcp_pose[:3], atol=1e-6)
    assert wrapped.observation_space.contains(obs)
    stacked = FrameStack(wrapped, 3)
    assert stacked.get_wrapper_attr("state_layout") is layout
    checked = default_wrappers(make_sim_env("PandaPickCube", pixels=True, seed=1))
    check_env(checked, skip_render_check=True)
    checked.close()  # its renderer, not the garbage collector on another thread, releases the EGL context
    with pytest.raises(ValueError, match="not in the state"):
        FlattenState(env, keys=("tcp_pose", "joint_torque"))
    env.close()


def test_frame_stack(env):
    wrapped = FrameStack(FlattenState(env), 3)
    obs, _ = wrapped.reset(seed=0)
    assert obs["state"].shape == (3, 27)
    np.testing.assert_array_equal(obs["state"][0], obs["state"][2])  # padded with the reset obs
    first = obs["state"][2].copy()
    obs, *_ = wrapped.step(np.array([0, 0, 1.0, 0, 0, 0, 0]))
    np.testing.assert_array_equal(obs["state"][1], first)
    assert not np.array_equal(obs["state"][2], first)
    with pytest.raises(ValueError, match=">= 1"):
        FrameStack(env, 0)


def test_chunked_actions_sum_rewards_and_stop_at_episode_end():
    env = make_sim_env("PandaPickCube", seed=0, max_episode_steps=3, dense_reward=True)
    wrapped = ChunkedActions(ScriptedTeleop(env, {0}, np.array([0, 0, -1.0, 0, 0, 0, 1.0])), 2)
    assert wrapped.action_space.shape == (2, 7)
    wrapped.reset(seed=0)
    chunk = np.zeros((2, 7))
    obs, reward, terminated, truncated, info = wrapped.step(chunk)
    assert info["chunk_steps"] == 2 and not truncated
    assert info["intervened"]
    np.testing.assert_array_equal(info["teleop_action"][0], [0, 0, -1.0, 0, 0, 0, 1.0])
    np.testing.assert_array_equal(info["teleop_action"][1], chunk[1])
    assert 0 < reward < 2  # dense reward of two steps, summed
    obs, reward, terminated, truncated, info = wrapped.step(chunk)
    assert truncated and info["chunk_steps"] == 1  # the episode ended inside the chunk
    with pytest.raises(ValueError, match="shape"):
        wrapped.step(np.zeros(7))


def test_gripper_penalty(env):
    wrapped = GripperPenalty(env, penalty=0.1)
    wrapped.reset(seed=0)
    rewards, penalties = [], []
    for g in (-1.0, -1.0, 0.0, 1.0):
        _, reward, _, _, info = wrapped.step(np.array([0, 0, 0, 0, 0, 0, g]))
        rewards.append(reward)
        penalties.append(info["grasp_penalty"])
    assert penalties == [-0.1, 0.0, 0.0, -0.1]
    assert rewards == pytest.approx([-0.1, 0.0, 0.0, -0.1])
    info_only = GripperPenalty(env, penalty=0.2, mode="info")
    info_only.reset(seed=0)
    _, reward, _, _, info = info_only.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert reward == 0.0 and info["grasp_penalty"] == -0.2
    with pytest.raises(ValueError, match="penalty"):
        GripperPenalty(env, penalty=float("nan"))


def test_time_limit(env):
    wrapped = TimeLimit(env, max_episode_steps=3)
    wrapped.reset(seed=0)
    flags = [wrapped.step(np.zeros(7))[3] for _ in range(3)]
    assert flags == [False, False, True]


def test_intervention_info_counts_takeovers(env):
    wrapped = InterventionInfo(ScriptedTeleop(env, {1, 2, 4}, np.zeros(7)))
    _, info = wrapped.reset(seed=0)
    assert info["intervened"] is False and info["teleop_action"] is None
    infos = [wrapped.step(np.zeros(7))[4] for _ in range(5)]
    assert [i["intervened"] for i in infos] == [False, True, True, False, True]
    assert [i["teleop_action"] is None for i in infos] == [True, False, False, True, False]
    assert infos[-1]["intervention_steps"] == 3 and infos[-1]["intervention_count"] == 2


def test_default_stack_gives_the_flat_learner_observation(env):
    wrapped = default_wrappers(env, gripper_penalty=0.05, action_chunk=2, frame_stack=2)
    obs, _ = wrapped.reset(seed=0)
    layout = wrapped.get_wrapper_attr("state_layout")
    assert obs["state"].shape == (2, layout["cube_pose"].stop)
    np.testing.assert_allclose(obs["state"][-1][layout["tcp_pose"]], 0.0, atol=1e-5)  # relative + euler at reset
    obs, reward, terminated, truncated, info = wrapped.step(np.zeros((2, 7)))
    assert wrapped.observation_space.contains(obs)
    assert info["chunk_steps"] == 2 and info["intervened"] is False
