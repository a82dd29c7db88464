"""Small gymnasium wrappers around ``FrankaEnv`` (each one job, each tested).

Typical stack for learning: ``FrankaEnv → [intervention] → RelativeFrame → QuatToEuler →
FlattenState (→ GripperPenalty → ChunkedActions / FrameStack)``; ``default_wrappers`` builds it.
The intervention wrapper belongs directly around ``FrankaEnv`` so that a SpaceMouse moves the
arm in the base frame whatever the reset pose; ``RelativeFrame`` then maps
``info["teleop_action"]``/``info["executed_action"]`` into the policy's frame. Wrappers pass
``info["intervened"]``/``info["teleop_action"]`` through.
"""

from __future__ import annotations

from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation, TimeLimit

from robot_servers.control.pose import quat_conjugate, quat_to_euler, relative_pose, rotate
from serl.envs.franka_env import franka_env_under
from serl.envs.task_config import ActionLayout

__all__ = [
    "RelativeFrame",
    "QuatToEuler",
    "FlattenState",
    "FrameStack",
    "ChunkedActions",
    "GripperPenalty",
    "InterventionInfo",
    "TimeLimit",
    "default_wrappers",
]

ROBOT_POSE_KEYS = ("tcp_pose", "target_pose")
VECTOR_KEYS = ("tcp_vel", "wrench")  # (linear, angular) pairs rotated with the frame
ACTION_INFO_KEYS = ("teleop_action", "executed_action")  # actions an inner intervention wrapper reports


def _is_object_pose(name: str, space: gym.Space) -> bool:
    return name.endswith("_pose") and name not in ROBOT_POSE_KEYS and space.shape == (7,)


def _is_object_position(name: str, space: gym.Space) -> bool:
    return name.endswith("_position") and space.shape == (3,)


def _state_space(env: gym.Env) -> gym.spaces.Dict:
    space = env.observation_space
    if not isinstance(space, gym.spaces.Dict) or not isinstance(space.get("state"), gym.spaces.Dict):
        raise ValueError("this wrapper needs FrankaEnv's nested observation {'state': {...}, 'images': {...}}")
    return space["state"]


def action_layout(env: gym.Env) -> ActionLayout:
    """The FrankaEnv's action layout under ``env`` (xyz, rpy, gripper for anything else)."""
    base = franka_env_under(env)
    return base.action_layout if base is not None else ActionLayout()


class RelativeFrame(gym.Wrapper):
    """Poses, velocities and wrenches in the frame of the pose at reset; base-frame actions too.

    Object poses and positions (``<name>_pose``, ``<name>_position`` from the twin) get relative positions;
    an orientation stays in the base frame, where an object on the table has a quaternion far from the w≈0
    sign flip.

    The policy then sees the same numbers wherever the (randomised) episode starts. With an
    ``ee``-frame task the actions are already relative and pass through unchanged.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._state_space = _state_space(env)
        if "tcp_pose" not in self._state_space.spaces:
            raise ValueError("RelativeFrame needs 'tcp_pose' in the state")
        base = franka_env_under(env)
        # an ee-frame task's actions are relative already and pass through unchanged
        self.rotates_actions = base is None or base.task.action_frame == "base"
        self._layout = action_layout(env)
        self.reset_pose: np.ndarray | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.reset_pose = np.asarray(obs["state"]["tcp_pose"], dtype=np.float64)
        return self._to_relative(obs), info

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        obs, reward, terminated, truncated, info = self.env.step(self._action_to_base(action))
        for key in ACTION_INFO_KEYS:
            if info.get(key) is not None:
                info[key] = self._action_from_base(np.asarray(info[key], dtype=np.float64))
        return self._to_relative(obs), reward, terminated, truncated, info

    def twist_from_base(self, twist: np.ndarray) -> np.ndarray:
        """A base-frame 6-D twist in this wrapper's action frame (unchanged before the first reset)."""
        if not self.rotates_actions or self.reset_pose is None:
            return np.asarray(twist, dtype=np.float64)
        return ActionLayout(rotation=True, gripper=False).rotate(quat_conjugate(self.reset_pose[3:]), twist)

    def _action_to_base(self, action: np.ndarray) -> np.ndarray:
        if not self.rotates_actions:
            return action
        return self._layout.rotate(self.reset_pose[3:], action)

    def _action_from_base(self, action: np.ndarray) -> np.ndarray:
        if not self.rotates_actions:
            return action
        return self._layout.rotate(quat_conjugate(self.reset_pose[3:]), action)

    def _to_relative(self, obs: dict) -> dict:
        inverse = quat_conjugate(self.reset_pose[3:])
        state = dict(obs["state"])
        for name, value in state.items():
            space = self._state_space[name]
            if name in ROBOT_POSE_KEYS:
                state[name] = relative_pose(value, self.reset_pose).astype(np.float32)
            elif _is_object_pose(name, space) or _is_object_position(name, space):
                position = rotate(inverse, np.asarray(value[:3], np.float64) - self.reset_pose[:3])
                state[name] = np.concatenate([position, value[3:]]).astype(np.float32)
            elif name in VECTOR_KEYS:
                pair = np.asarray(value, dtype=np.float64).reshape(2, 3)
                state[name] = rotate(inverse, pair).reshape(6).astype(np.float32)
        return {**obs, "state": state}


class QuatToEuler(gym.ObservationWrapper):
    """Pose entries from xyz + quaternion (7) to xyz + extrinsic xyz euler (6); by default the
    robot's own poses (object orientations keep their quaternion, which has no ±π wrap)."""

    def __init__(self, env: gym.Env, keys: Sequence[str] | None = None):
        super().__init__(env)
        state_space = _state_space(env)
        self.keys = tuple(keys) if keys is not None else tuple(key for key in ROBOT_POSE_KEYS if key in state_space.spaces)
        missing = [key for key in self.keys if key not in state_space.spaces]
        if missing:
            raise ValueError(f"QuatToEuler keys: {missing} not in the state {list(state_space)}")
        new_state = dict(state_space.spaces)
        for key in self.keys:
            new_state[key] = gym.spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict({**env.observation_space.spaces, "state": gym.spaces.Dict(new_state)})

    def observation(self, obs: dict) -> dict:
        state = dict(obs["state"])
        for key in self.keys:
            pose = np.asarray(state[key], dtype=np.float64)
            state[key] = np.concatenate([pose[:3], quat_to_euler(pose[3:])]).astype(np.float32)
        return {**obs, "state": state}


class FlattenState(gym.ObservationWrapper):
    """``{"state": {name: array}, "images": {cam: img}}`` → ``{"state": (d,) float32, cam: img}``.

    ``state_layout`` maps each name to its slice of the vector (read it with
    ``env.get_wrapper_attr("state_layout")``); the order is the task's, not alphabetical.
    """

    def __init__(self, env: gym.Env, keys: Sequence[str] | None = None):
        super().__init__(env)
        state_space = _state_space(env)
        if keys is None:
            base = franka_env_under(env)
            order = base.state_order if base is not None else ()
            keys = [key for key in order if key in state_space.spaces] or list(state_space)
            keys += [key for key in state_space if key not in keys]
        missing = [key for key in keys if key not in state_space.spaces]
        if missing:
            raise ValueError(f"FlattenState keys: {missing} not in the state {list(state_space)}")
        self.state_layout: dict[str, slice] = {}
        offset = 0
        for key in keys:
            size = int(np.prod(state_space[key].shape))
            self.state_layout[key] = slice(offset, offset + size)
            offset += size
        image_space = env.observation_space.spaces.get("images", gym.spaces.Dict({}))
        if "state" in image_space.spaces:
            raise ValueError("FlattenState: a camera named 'state' would clash with the state vector")
        self.observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-np.inf, np.inf, shape=(offset,), dtype=np.float32), **image_space.spaces}
        )

    def observation(self, obs: dict) -> dict:
        state = np.concatenate(
            [np.asarray(obs["state"][key], dtype=np.float32).reshape(-1) for key in self.state_layout]
        )
        return {"state": state, **obs.get("images", {})}

    def unflatten(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Named entries of a flat state vector (or batch of them)."""
        state = np.asarray(state)
        return {key: state[..., where] for key, where in self.state_layout.items()}


def FrameStack(env: gym.Env, size: int) -> gym.Wrapper:
    """Stack the last ``size`` observations on a new leading axis (padding with the reset obs)."""
    if size < 1:
        raise ValueError(f"FrameStack size must be >= 1, got {size}")
    return FrameStackObservation(env, size, padding_type="reset")


class ChunkedActions(gym.Wrapper):
    """Execute a chunk of ``size`` actions per step; rewards are summed, the chunk stops at the episode end.

    ``info["teleop_action"]`` becomes the executed chunk (teleop actions where a human intervened).
    """

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        if size < 1:
            raise ValueError(f"ChunkedActions size must be >= 1, got {size}")
        base = env.action_space
        self.size = size
        self.action_space = gym.spaces.Box(
            np.broadcast_to(base.low, (size, *base.shape)), np.broadcast_to(base.high, (size, *base.shape)),
            dtype=base.dtype)

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"action: expected shape {self.action_space.shape}, got {actions.shape}")
        executed = actions.copy()
        total, intervened, steps = 0.0, False, 0
        for i, action in enumerate(actions):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += reward
            steps += 1
            if info.get("intervened"):
                intervened = True
                if info.get("teleop_action") is not None:
                    executed[i] = info["teleop_action"]
            if terminated or truncated:
                break
        info = {**info, "intervened": intervened, "chunk_steps": steps}
        if intervened:
            info["teleop_action"] = executed
        return obs, total, terminated, truncated, info


class GripperPenalty(gym.Wrapper):
    """A cost for every gripper command that changes the gripper (open↔close).

    ``mode="reward"`` subtracts it from the reward; ``mode="info"`` only reports it in
    ``info["grasp_penalty"]`` (for a grasp critic). The env marks changes with ``info["gripper_changed"]``.
    """

    def __init__(self, env: gym.Env, penalty: float = 0.1, mode: str = "reward"):
        super().__init__(env)
        if not np.isfinite(penalty) or penalty < 0:
            raise ValueError(f"GripperPenalty penalty must be finite and >= 0, got {penalty}")
        if mode not in ("reward", "info"):
            raise ValueError(f"GripperPenalty mode must be 'reward' or 'info', got {mode!r}")
        self.penalty = float(penalty)
        self.mode = mode

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        cost = self.penalty if info.get("gripper_changed") else 0.0
        info["grasp_penalty"] = -cost
        if self.mode == "reward":
            reward -= cost
        return obs, reward, terminated, truncated, info


class InterventionInfo(gym.Wrapper):
    """Guarantees ``info["intervened"]``/``info["teleop_action"]`` on every step and counts
    interventions per episode (``intervention_steps``, ``intervention_count`` = separate takeovers)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._steps = self._count = 0
        self._previous = False
        return obs, {**info, "intervened": False, "teleop_action": None}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        intervened = bool(info.get("intervened", False))
        self._steps += intervened
        self._count += intervened and not self._previous
        self._previous = intervened
        info = {
            **info,
            "intervened": intervened,
            "teleop_action": info.get("teleop_action") if intervened else None,
            "intervention_steps": self._steps,
            "intervention_count": self._count,
        }
        return obs, reward, terminated, truncated, info


def default_wrappers(
    env: gym.Env,
    *,
    intervention: Callable[[gym.Env], gym.Env] | None = None,
    relative: bool = True,
    euler: bool = True,
    gripper_penalty: float = 0.0,
    frame_stack: int = 1,
    action_chunk: int = 1,
) -> gym.Env:
    """The usual learning stack; the result's observation is the flat dict the replay buffers take.

    ``intervention`` (e.g. ``lambda e: InterventionWrapper(e, teleop)``) is applied right around the env.
    """
    if intervention is not None:
        env = intervention(env)
    if relative:
        env = RelativeFrame(env)
    if euler:
        env = QuatToEuler(env)
    env = FlattenState(env)
    env = InterventionInfo(env)
    if gripper_penalty > 0:
        env = GripperPenalty(env, gripper_penalty)
    if action_chunk > 1:
        env = ChunkedActions(env, action_chunk)
    if frame_stack > 1:
        env = FrameStack(env, frame_stack)
    return env
