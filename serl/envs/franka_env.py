"""``FrankaEnv``: one gymnasium env for the twin and the real arm, on a ``RobotClient``.

One step sends a single target (scaled 6-D end-effector delta applied to the measured pose, plus
an optional gripper width; the robot's guard clips it to the task's safety box), keeps the control period,
then reads state, images and (when the reward needs it) the twin's scene — all through one
``RobotClient.step`` call, which is one round trip over HTTP. Lockstep clients are advanced by
exactly one period; real-time clients are paced with a drift-free ``PeriodicClock``:
the env sleeps itself in-process, while a remote client is told the time left to the tick.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import gymnasium as gym
import numpy as np

from robot_servers.backends.base import RobotState
from robot_servers.limits import MAX_GRIPPER_WIDTH
from robot_servers.cameras.base import CropResize
from robot_servers.clock import PeriodicClock
from robot_servers.control.pose import apply_delta
from serl.envs.reset_hooks import build_hooks
from serl.envs.rewards import GroundTruthReward, make_reward
from serl.envs.robot_client import RobotClient
from serl.envs.task_config import TaskConfig

STATE_SIZES = {
    "tcp_pose": 7,
    "tcp_position": 3,
    "tcp_vel": 6,
    "wrench": 6,
    "gripper_width": 1,
    "q": 7,
    "dq": 7,
    "target_pose": 7,
}
GRIPPER_THRESHOLD = 0.5  # binary mode: > +0.5 opens, < -0.5 closes, in between keeps


class ArmCommand(NamedTuple):
    """What one step sends to one arm: the target pose (xyz + quat xyzw) and a gripper width (None: unchanged)."""

    target: np.ndarray
    gripper: float | None


class RobotClientError(RuntimeError):
    """The robot client failed mid-episode (dropped connection, server gone). ``reset()`` reconnects."""


class FrankaEnv(gym.Env):
    """Gymnasium env on a ``RobotClient`` driven by a ``TaskConfig``.

    Observation: ``{"state": {name: float32 array}, "images": {camera: (H, W, 3) uint8}}``
    (``images`` only when the task has cameras). Action: ``[dx, dy, dz, rx, ry, rz, gripper]``
    in [-1, 1] (no gripper entry when ``gripper_mode == "none"``). ``reward_fn="task"`` takes
    ``make_reward(task)``: the ground-truth reward of a ``reward="ground_truth"`` task; with a classifier
    or keyboard reward it is 0 until that wrapper supplies it.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        client: RobotClient,
        task: TaskConfig,
        *,
        reward_fn: GroundTruthReward | None | str = "task",
        hooks: Sequence[Callable] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        render_mode: str | None = None,
        owns_client: bool = True,
    ):
        unknown = [key for key in task.state_keys if key not in STATE_SIZES]
        if unknown:
            raise ValueError(f"TaskConfig.state_keys: unknown entries {unknown}; known: {sorted(STATE_SIZES)}")
        if task.action_frame not in ("base", "ee"):
            raise ValueError(f"TaskConfig.action_frame must be 'base' or 'ee', got {task.action_frame!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.client = client
        self.task = task
        if isinstance(reward_fn, str):
            if reward_fn != "task":
                raise ValueError(f"reward_fn: expected a reward object, None or 'task', got {reward_fn!r}")
            reward_fn = make_reward(task)
        self.reward_fn = reward_fn
        self.owns_client = owns_client  # False: another task on the same robot (a task cycle) closes it
        self._wants_scene = bool(task.scene_objects) or reward_fn is not None
        self.hooks = list(build_hooks(task) if hooks is None else hooks)
        self.render_mode = render_mode
        self.period = 1.0 / task.control_hz
        self.metadata = {**self.metadata, "render_fps": task.control_hz}
        self._sleep = sleep
        self._state: RobotState | None = None
        self.camera_frames: Mapping[str, tuple[np.ndarray, float]] = {}
        self._obs: dict | None = None
        self._gripper_command: float | None = None
        self._broken = False
        self._episode_index = 0
        self._steps = 0
        self._pacing = PeriodicClock(self.period, clock)

        self.action_layout = task.action_layout
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.action_layout.size,), dtype=np.float32)
        self._held_orientation: np.ndarray | None = None
        state_space = {key: _unbounded(STATE_SIZES[key]) for key in task.state_keys}
        state_space.update({task.object_state_key(name): _unbounded(task.object_state_size)
                            for name in task.scene_objects})
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Dict(state_space)}
        if task.cameras:
            spaces["images"] = gym.spaces.Dict(
                {cam.name: gym.spaces.Box(0, 255, shape=(*cam.size, 3), dtype=np.uint8) for cam in task.cameras}
            )
        self.observation_space = gym.spaces.Dict(spaces)

    # ----------------------------------------------------------------- gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Run the task's reset hooks, then return the first observation."""
        super().reset(seed=seed)
        if self._broken:
            self.client.reconnect()
            self._broken = False
        with self._client_call("reset"):
            state = self.client.state()
            if state.errors:
                self.client.recover()
            self._state = state
            self._gripper_command = None
            self._pacing.restart()
            for hook in self.hooks:
                hook(self, self._episode_index, self.np_random)
            self._obs = self._observe(*self._read())
            self._held_orientation = np.array(self._state.tcp_pose[3:7], dtype=np.float64)
            if self._gripper_command is None:
                self._gripper_command = MAX_GRIPPER_WIDTH if self._state.gripper_width > MAX_GRIPPER_WIDTH / 2 else 0.0
            if self.reward_fn is not None:
                self.reward_fn.reset(self.client.scene(), self._state)
        self._pacing.restart()
        self._pacing.overruns = 0
        self._episode_index += 1
        self._steps = 0
        return self._obs, {"succeed": False, "intervened": False, "episode_index": self._episode_index - 1}

    def step(self, action):
        """Apply one scaled end-effector delta (+ gripper), keep the period, observe."""
        command = self.command(action)
        with self._client_call("step"):
            if self.client.lockstep:
                state, frames = self.client.step(command.target, command.gripper, advance=self.period,
                                                 images=bool(self.task.cameras), scene=self._wants_scene)
                period_error = 0.0
            elif self.client.waits_remotely:  # one round trip: the robot side waits out the time to our tick
                state, frames = self.client.step(command.target, command.gripper, wait=self._pacing.time_to_tick(),
                                                 images=bool(self.task.cameras), scene=self._wants_scene)
                period_error = self._pacing.tick()
            else:
                self.send(command)
                period_error = self._keep_period()
                state, frames = self._read()
        return self.conclude(command, state, frames, period_error)

    # ----------------------------------------------------------------- a step in phases (several arms, one clock)

    def command(self, action) -> ArmCommand:
        """The target pose and gripper width one action asks for; ValueError on a bad action. Sends nothing."""
        if self._broken:
            raise RobotClientError("the robot client failed earlier in this episode; call reset() to reconnect")
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = self._check_action(action)
        pos_scale, rot_scale, gripper_scale = self.task.action_scale
        layout = self.action_layout
        rotation = action[3:6] * rot_scale if layout.rotation else np.zeros(3)
        target = apply_delta(self._state.tcp_pose, np.concatenate([action[:3] * pos_scale, rotation]),
                             self.task.action_frame)
        if not layout.rotation:
            target[3:7] = self._held_orientation
        gripper = None
        if layout.gripper:
            gripper = self._gripper_from_action(action[layout.gripper_index] * gripper_scale)
        return ArmCommand(target, gripper)

    def send(self, command: ArmCommand) -> None:
        """Send one command's target (and gripper width) to the arm."""
        with self._client_call("step"):
            self.client.set_target(command.target, command.gripper)

    def send_pair(self, commands: Mapping[str, ArmCommand]) -> float:
        """Two arms' commands, by the arm names of ``client.pair``, through this arm's client: one request to the
        process serving both, which sets them back to back. Returns the seconds between the two targets."""
        with self._client_call("step"):
            return self.client.set_targets({arm: (c.target, c.gripper) for arm, c in commands.items()})

    def observe_after(self) -> tuple[RobotState, dict]:
        """State and frames (and the scene, when the reward needs it) after a command went out."""
        with self._client_call("step"):
            return self._read()

    def conclude(self, command: ArmCommand, state: RobotState, frames: Mapping, period_error: float):
        """The step's (observation, reward, terminated, truncated, info) once ``command`` was sent and the arm
        observed."""
        with self._client_call("step"):
            self._obs = self._observe(state, frames)
            reward, succeed = self._reward()
        if command.gripper is not None:
            self._gripper_command = command.gripper
        self._steps += 1
        terminated = bool(succeed)
        truncated = not terminated and self._steps >= self.task.max_episode_steps
        info = {
            "succeed": bool(succeed),
            "intervened": False,
            "gripper_changed": command.gripper is not None,
            # The robot's guard clips targets to the safety box; what it tracks now is the target it took.
            "safety_clipped": not _same_pose(self._state.target_pose, command.target),
            "target_pose": self._state.target_pose,
            "control_period_error": period_error,
            "overruns": self._pacing.overruns,
            "robot_errors": list(self._state.errors),
        }
        return self._obs, float(reward), terminated, truncated, info

    def render(self):
        """Camera images side by side (``rgb_array``), or None without cameras."""
        if self.render_mode != "rgb_array" or self._obs is None or "images" not in self._obs:
            return None
        return np.concatenate(list(self._obs["images"].values()), axis=1)

    def close(self):
        if self.owns_client:
            self.client.close()

    # ----------------------------------------------------------------- helpers for reset hooks

    @property
    def state_order(self) -> tuple[str, ...]:
        """State entry names in the task's order (the observation space's Dict sorts them)."""
        return tuple(self.task.state_keys) + tuple(map(self.task.object_state_key, self.task.scene_objects))

    @property
    def state(self) -> RobotState | None:
        """The newest robot state the env has read."""
        return self._state

    def read_state(self) -> RobotState:
        self._state = self.client.state()
        return self._state

    def command_gripper(self, width: float) -> None:
        """Send a gripper width now and remember it as the binary gripper's state."""
        self.client.set_gripper(width)
        self._gripper_command = float(width)

    @property
    def lockstep(self) -> bool:
        """Simulated time: the client advances the twin instead of the env sleeping."""
        return self.client.lockstep

    def send_hold(self) -> None:
        """Send the target the arm tracks now again (a real-time robot's watchdog sees a live client)."""
        with self._client_call("hold"):
            self.client.set_target(self._state.target_pose)

    def hold(self) -> None:
        """One control period without an env step, the robot's target unchanged: the target is sent again, the
        period passes, and the state is read."""
        self.send_hold()
        self.idle()

    def idle(self) -> None:
        """One control period in which nothing is sent: the period passes and the state is read."""
        self.wait_period()
        self.read_state()

    def safety_stop(self, reason: str) -> None:
        """Latch the robot's safety stop: it holds and refuses commands until ``recover``."""
        self.client.safety_stop(reason)

    def recover(self) -> None:
        """Clear the robot's error state (a safety stop, a reflex) before the next reset."""
        self.client.recover()

    def wait_period(self) -> float:
        """Let one control period pass (advance the twin, or sleep on the drift-free clock)."""
        return self._keep_period()

    # ----------------------------------------------------------------- internals

    def _check_action(self, action) -> np.ndarray:
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"action: expected {self.action_space.shape[0]} numbers, got {action!r}") from None
        if arr.shape != self.action_space.shape:
            raise ValueError(f"action: expected shape {self.action_space.shape}, got {arr.shape}")
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"action: entries {bad.tolist()} are not finite ({arr[bad].tolist()})")
        return np.clip(arr, -1.0, 1.0)

    def _gripper_from_action(self, value: float) -> float | None:
        """Gripper width to send this step, or None when the command does not change."""
        if self.task.gripper_mode == "binary":
            if value > GRIPPER_THRESHOLD:
                wanted = MAX_GRIPPER_WIDTH
            elif value < -GRIPPER_THRESHOLD:
                wanted = 0.0
            else:
                return None
        else:
            wanted = (float(np.clip(value, -1.0, 1.0)) + 1.0) / 2.0 * MAX_GRIPPER_WIDTH
        if self._gripper_command is not None and abs(wanted - self._gripper_command) < 1e-5:
            return None
        return wanted

    def _keep_period(self) -> float:
        if self.client.lockstep:
            self.client.advance(self.period)
            return 0.0
        self._pacing.wait(self._sleep)
        return self._pacing.tick()

    def _read(self) -> tuple[RobotState, dict]:
        return self.client.step(images=bool(self.task.cameras), scene=self._wants_scene)

    def _observe(self, state: RobotState, frames: Mapping[str, tuple[np.ndarray, float]]) -> dict:
        self._state = state
        values = {
            "tcp_pose": state.tcp_pose,
            "tcp_position": state.tcp_pose[:3],
            "tcp_vel": state.tcp_vel,
            "wrench": state.wrench,
            "gripper_width": [state.gripper_width],
            "q": state.q,
            "dq": state.dq,
            "target_pose": state.target_pose,
        }
        obs_state = {key: np.asarray(values[key], dtype=np.float32) for key in self.task.state_keys}
        if self.task.scene_objects:
            scene = self.client.scene()
            for name in self.task.scene_objects:
                value = np.asarray(scene[name][: self.task.object_state_size], dtype=np.float64)
                if self.task.object_state == "offset":
                    value = value - state.tcp_pose[:3]
                obs_state[self.task.object_state_key(name)] = value.astype(np.float32)
        obs: dict[str, Any] = {"state": obs_state}
        self.camera_frames = frames  # full frames, for a viewer (the observation holds the crops)
        if self.task.cameras:
            images = {}
            for cam in self.task.cameras:
                if cam.name not in frames:
                    raise RobotClientError(f"camera {cam.name!r} missing from the client's frames {sorted(frames)}")
                frame = np.asarray(frames[cam.name][0], dtype=np.uint8)
                if frame.shape != (*cam.size, 3):
                    frame = CropResize(crop=None, size=cam.size).apply(frame)
                images[cam.name] = frame
            obs["images"] = images
        return obs

    def _reward(self) -> tuple[float, bool]:
        if self.reward_fn is None:
            return 0.0, False
        reward, succeed = self.reward_fn(self.client.scene(), self._state)
        return float(reward), bool(succeed)

    @contextlib.contextmanager
    def _client_call(self, what: str):
        try:
            yield
        except (ValueError, NotImplementedError, RobotClientError):
            raise
        except OSError as exc:  # ConnectionError, TimeoutError, socket errors: the link is gone
            self._broken = True
            raise RobotClientError(
                f"robot client failed during {what}: {type(exc).__name__}: {exc}. "
                "The episode is over; the next reset() reconnects."
            ) from exc
        except Exception:
            self._broken = True
            raise


def franka_env_under(env: gym.Env) -> FrankaEnv | None:
    """The ``FrankaEnv`` under ``env``'s wrappers, or None when ``env`` wraps another env."""
    base = env.unwrapped
    return base if isinstance(base, FrankaEnv) else None


def _unbounded(size: int) -> gym.spaces.Box:
    return gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)


def _same_pose(a: np.ndarray, b: np.ndarray, tolerance: float = 1e-9) -> bool:
    """Equal positions and rotations (q and −q are the same rotation)."""
    return bool(np.allclose(a[:3], b[:3], atol=tolerance) and abs(np.dot(a[3:], b[3:])) > 1 - tolerance)
