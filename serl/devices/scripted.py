"""A scripted expert for the twin tasks, behind the ``Teleop`` interface (it "drives" like a person would).

Like a person's device, it commands a twist in the robot's base frame; ``InterventionWrapper``
turns it into the policy's action frame.

It reads the arm's state and the twin's ground-truth scene through the env's robot client, plans a
few waypoints and returns the action that moves towards the current one, plus Gaussian noise so the
demos are not all identical. Used by ``serl record-demos --teleop scripted`` and ``serl train``.

- ``PandaPickCube``: above the cube (yaw aligned to its faces when the task rotates) → down → close → lift.
- ``PandaPegInsertion``: peg tip above the hole (yaw aligned) → down into the hole.
- ``PandaRelocateFw`` / ``PandaRelocateBw`` (scene ``relocate``): grasp as for the pick → lift → carry above the
  goal region (the reward's ``goal_xy``) → lower until the cube rests on the table → open.
- ``PandaHandover`` (two arms, ``HandoverExpert``): the left hand brings the bar to the middle, the right hand
  takes it and carries it to the goal.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

from robot_servers.control.pose import (
    DOWN_QUAT,
    compose_pose,
    euler_to_quat,
    orientation_error,
    quat_conjugate,
    quat_multiply,
    quat_to_euler,
    rotate,
)
from robot_servers.twin.models import CUBE_HALF, HANDOVER_GOAL, HOLE_DEPTH, TABLE_TOP  # geometry only; does not import mujoco
from serl.devices.base import Teleop, TeleopCommand
from serl.envs.franka_env import franka_env_under
from serl.envs.rewards import peg_tip


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    noise: float = 0.1  # std of Gaussian noise on the twist (action units)
    gain: float = 0.8  # fraction of the remaining error corrected per step
    seed: int | None = None
    approach_height: float = 0.05  # m above the cube / hole top before going down
    lift_height: float = 0.16  # m the cube is lifted (the task needs 0.1)
    grasp_steps: int = 4  # steps the gripper is given to close
    carry_height: float = 0.04  # m the cube is carried above the table (relocation)


def _wrap(angle: float, period: float) -> float:
    """Angle folded into [-period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


def _gripper_yaw(quat: np.ndarray) -> float:
    return float(quat_to_euler(quat_multiply(quat, quat_conjugate(DOWN_QUAT)))[2])


def _yaw_quat(yaw: float) -> np.ndarray:
    return quat_multiply(euler_to_quat([0.0, 0.0, yaw]), DOWN_QUAT)


class ScriptedExpert(Teleop):
    """Solves the twin tasks from ground truth. ``env`` is the env the ``InterventionWrapper`` wraps."""

    def __init__(self, env: gym.Env, config: ExpertConfig = ExpertConfig()):
        self.env = env
        base = franka_env_under(env)
        if base is None:
            raise ValueError("ScriptedExpert needs a FrankaEnv under the wrappers")
        self.base = base
        task = base.task
        if task.scene not in ("pick_cube", "peg_insertion", "relocate"):
            raise ValueError(f"ScriptedExpert: no script for scene {task.scene!r} (task {task.name})")
        self.goal_xy: np.ndarray | None = None
        if task.scene == "relocate":
            goal = getattr(base.reward_fn, "goal_xy", None)
            if goal is None:
                raise ValueError(f"ScriptedExpert: task {task.name} (scene 'relocate') needs a reward with a goal_xy "
                                 f"(serl.envs.rewards.RelocateReward), got {type(base.reward_fn).__name__}")
            self.goal_xy = np.asarray(goal, dtype=np.float64)
        self.task = task
        self.expert_config = config
        self.rng = np.random.default_rng(config.seed)
        self.reset()

    def reset(self) -> None:
        self.noise_factor = 1.0
        self.phase = "approach"
        self.phase_steps = 0
        self.initial_cube_z: float | None = None

    # ------------------------------------------------------------------ planning
    def _target(self, tcp: np.ndarray, scene: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, str | None]:
        """(target position, target orientation, gripper command) for the current phase."""
        cfg = self.expert_config
        yaw = _gripper_yaw(tcp[3:])
        if self.task.scene in ("pick_cube", "relocate"):
            cube = scene["cube"]
            if self.initial_cube_z is None:
                self.initial_cube_z = float(cube[2])
            # a task without rotation actions keeps its yaw: the open hand (8 cm) takes the cube at any yaw
            target_yaw = yaw
            if self.task.rotation_actions:
                target_yaw += _wrap(float(quat_to_euler(cube[3:])[2]) - yaw, np.pi / 2)
            orientation = _yaw_quat(target_yaw)
            above = np.array([cube[0], cube[1], cube[2] + cfg.approach_height])
            xy_error = np.linalg.norm(tcp[:2] - cube[:2])
            if self.phase == "approach":
                if xy_error < 0.006 and abs(tcp[2] - above[2]) < 0.02 and abs(target_yaw - yaw) < 0.08:
                    self._enter("descend")
                return above, orientation, "open"
            if self.phase == "descend":
                grasp = np.array([cube[0], cube[1], cube[2] - 0.004])
                if xy_error > 0.015:
                    self._enter("approach")
                elif tcp[2] - cube[2] < 0.008:
                    self._enter("grasp")
                return grasp, orientation, "open"
            if self.phase == "grasp":
                if self.phase_steps >= cfg.grasp_steps:
                    self._enter("lift")
                return np.array([cube[0], cube[1], cube[2] - 0.004]), orientation, "close"
            if self.task.scene == "relocate":
                return self._relocate_target(tcp, cube, above, orientation)
            # lift: hold the grasp and rise; start over if the cube slipped out
            if tcp[2] - cube[2] > 0.03:
                self._enter("approach")
                return above, orientation, "open"
            lift = np.array([tcp[0], tcp[1], self.initial_cube_z + cfg.lift_height])
            return lift, orientation, "close"

        hole, peg = scene["hole"], scene["peg"]
        tip = peg_tip(peg)
        target_yaw = yaw + _wrap(float(quat_to_euler(hole[3:])[2]) - float(quat_to_euler(peg[3:])[2]), np.pi / 2)
        orientation = _yaw_quat(target_yaw)
        tip_to_tcp = tcp[:3] - tip
        xy_error = np.linalg.norm(tip[:2] - hole[:2])
        # a person slows down and steadies near the hole: noise shrinks with the remaining xy error
        self.noise_factor = float(np.clip(xy_error / 0.01, 0.1, 1.0))
        top = hole[2] + HOLE_DEPTH
        if self.phase == "approach":
            goal_tip = np.array([hole[0], hole[1], top + cfg.approach_height / 2])
            if xy_error < 0.001 and abs(target_yaw - yaw) < 0.015 and abs(tip[2] - goal_tip[2]) < 0.01:
                self._enter("insert")
            return goal_tip + tip_to_tcp, orientation, None
        goal_tip = np.array([hole[0], hole[1], hole[2]])
        if xy_error > 0.002 and tip[2] > top:
            self._enter("approach")
        return goal_tip + tip_to_tcp, orientation, None

    def _relocate_target(self, tcp, cube, above, orientation) -> tuple[np.ndarray, np.ndarray, str]:
        """After the grasp: lift, carry over the goal, lower until the cube rests, open."""
        cfg = self.expert_config
        rest_z = TABLE_TOP + CUBE_HALF
        goal = self.goal_xy
        if self.phase == "release":
            return np.array([tcp[0], tcp[1], rest_z + cfg.approach_height]), orientation, "open"
        if tcp[2] - cube[2] > 0.03:  # the cube slipped out: start over
            self._enter("approach")
            return above, orientation, "open"
        carry_z = rest_z + cfg.carry_height - 0.004
        if self.phase == "lift":
            if cube[2] - rest_z > cfg.carry_height - 0.01:
                self._enter("carry")
            return np.array([tcp[0], tcp[1], carry_z]), orientation, "close"
        offset = tcp[:2] - cube[:2]  # carry the cube's centre, not the TCP, over the goal
        if self.phase == "carry":
            if np.linalg.norm(cube[:2] - goal) < 0.006:
                self._enter("lower")
            return np.array([*(goal + offset), carry_z]), orientation, "close"
        if cube[2] - rest_z < 0.002:
            self._enter("release")
        return np.array([*(goal + offset), rest_z - 0.008]), orientation, "close"

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def read(self) -> TeleopCommand:
        state = self.base.state if self.base.state is not None else self.base.read_state()
        tcp = np.asarray(state.tcp_pose, dtype=np.float64)
        scene = {k: np.asarray(v, dtype=np.float64) for k, v in self.base.client.scene().items()}
        position, orientation, gripper = self._target(tcp, scene)
        self.phase_steps += 1
        pos_scale, rot_scale, _ = self.task.action_scale
        cfg = self.expert_config
        # apply_delta composes exp(δ) ⊗ current, so δ = −orientation_error(current, desired)
        rotation = -orientation_error(tcp[3:], orientation)
        twist = np.concatenate([(position - tcp[:3]) / pos_scale, rotation / rot_scale]) * cfg.gain
        twist = np.clip(twist, -1.0, 1.0)
        if cfg.noise > 0:
            twist = np.clip(twist + self.rng.normal(0.0, cfg.noise * self.noise_factor, 6), -1.0, 1.0)
        if self.task.gripper_mode == "none":
            gripper = None
        return TeleopCommand(twist, gripper, {"phase_" + self.phase: True}, active=True, timestamp=0.0)


class HandoverExpert(Teleop):
    """Solves ``PandaHandover`` from ground truth, both arms at once (its commands carry the whole 8-value action).

    Left: above its end of the bar → down → close → carry to the middle. Right: above its end → down → close.
    Then the left opens and slides off its end of the bar while the right carries the bar to the goal. Waypoints
    are in the world frame of the twin layout (``BimanualTask.bases``), each arm's motion turned into its own base
    frame.
    """

    def __init__(self, env: gym.Env, config: ExpertConfig = ExpertConfig()):
        from serl.envs.bimanual import GRASP_OFFSET, HANDOVER_Y
        from serl.envs.dual_franka_env import robot_env_under

        base = robot_env_under(env)
        if base is None or getattr(base.task, "scene", None) != "handover":
            raise ValueError("HandoverExpert needs the DualFrankaEnv of a handover task under the wrappers")
        self.base, self.task = base, base.task
        self.bases = self.task.bases()
        self.grasp_offset, self.handover_y = GRASP_OFFSET, HANDOVER_Y
        self.goal = np.asarray(getattr(base.reward_fn, "goal", HANDOVER_GOAL), dtype=np.float64)
        self.expert_config = config
        self.rng = np.random.default_rng(config.seed)
        self.reset()

    def reset(self) -> None:
        self.phase = "left_approach"
        self.phase_steps = 0
        self.handover: np.ndarray | None = None
        self.right_wait: np.ndarray | None = None

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def _world(self, arm: str, point) -> np.ndarray:
        return compose_pose(self.bases[arm], np.r_[point[:3], 0.0, 0.0, 0.0, 1.0])[:3]

    def _plan(self, hands: dict, bar: np.ndarray) -> dict[str, tuple[np.ndarray, str | None]]:
        """Each arm's (world target, gripper) for the current phase; advances the phase."""
        g, above = self.grasp_offset, self.expert_config.approach_height
        left_grasp, right_grasp = bar - [g, 0.0, 0.0], bar + [g, 0.0, 0.0]
        left, right = hands["left"], hands["right"]
        grasp_steps = self.expert_config.grasp_steps + 4  # the hand closes 5.5 cm onto the 2.5 cm bar
        if self.phase in ("carry", "right_approach") and self.handover is None:  # fixed once the carry starts
            self.handover = np.array([left[0], self.handover_y + (left[1] - bar[1]), self.goal[2] - 0.03])
        handover = self.handover
        right_wait = self.right_wait if self.right_wait is not None else right.copy()
        self.right_wait = right_wait
        phase, steps = self.phase, self.phase_steps
        if phase == "left_approach":
            target = left_grasp + [0.0, 0.0, above]
            if np.linalg.norm(left[:2] - target[:2]) < 0.006 and abs(left[2] - target[2]) < 0.02:
                self._enter("left_descend")
            return {"left": (target, "open"), "right": (right_wait, None)}
        if phase == "left_descend":
            if np.linalg.norm(left[:2] - left_grasp[:2]) > 0.015:
                self._enter("left_approach")
            elif left[2] - bar[2] < 0.008:
                self._enter("left_grasp")
            return {"left": (left_grasp - [0.0, 0.0, 0.004], "open"), "right": (right_wait, None)}
        if phase == "left_grasp":
            if steps >= grasp_steps:
                self._enter("carry")
            return {"left": (left_grasp - [0.0, 0.0, 0.004], "close"), "right": (right_wait, None)}
        if phase == "carry":
            if left[2] - bar[2] > 0.03:  # slipped out
                self._enter("left_approach")
            elif abs(bar[1] - self.handover_y) < 0.01 and abs(handover[2] - left[2]) < 0.015:
                self._enter("right_approach")
            return {"left": (handover, "close"), "right": (right_wait, None)}
        if phase in ("right_approach", "right_descend", "right_grasp"):
            held = (handover, "close")
            if phase == "right_approach":
                target = right_grasp + [0.0, 0.0, above]
                if np.linalg.norm(right[:2] - target[:2]) < 0.006 and abs(right[2] - target[2]) < 0.02:
                    self._enter("right_descend")
                return {"left": held, "right": (target, "open")}
            if phase == "right_descend":
                if np.linalg.norm(right[:2] - right_grasp[:2]) > 0.015:
                    self._enter("right_approach")
                elif right[2] - bar[2] < 0.008:
                    self._enter("right_grasp")
                return {"left": held, "right": (right_grasp - [0.0, 0.0, 0.004], "open")}
            if steps >= grasp_steps:
                self._enter("release")
            return {"left": held, "right": (right_grasp - [0.0, 0.0, 0.004], "close")}
        if phase == "release":
            if steps >= self.expert_config.grasp_steps:
                self._enter("deliver")
            return {"left": (left, "open"), "right": (right, "close")}
        # deliver: the open left slides off along the bar (rising, it would lift the bar by its end); the right
        # carries the bar to the goal
        if right[2] - bar[2] > 0.03:
            self._enter("right_approach")
        away = left + [-0.07, 0.0, 0.0]
        return {"left": (away, "open"), "right": (self.goal + [g, 0.0, 0.0], "close")}

    def read(self) -> TeleopCommand:
        base = self.base
        states = {arm: env.state if env.state is not None else env.read_state() for arm, env in base.arms.items()}
        hands = {arm: self._world(arm, state.tcp_pose) for arm, state in states.items()}
        bar = self._world("left", base.arms["left"].client.scene()["bar"])
        plan = self._plan(hands, bar)
        self.phase_steps += 1
        cfg = self.expert_config
        action = []
        for arm, env in base.arms.items():
            target, gripper = plan[arm]
            inverse = quat_conjugate(self.bases[arm][3:])
            motion = rotate(inverse, target - hands[arm]) / env.task.action_scale[0] * cfg.gain
            if cfg.noise > 0:
                motion = motion + self.rng.normal(0.0, cfg.noise, 3)
            action += [*np.clip(motion, -1.0, 1.0), {"open": 1.0, "close": -1.0, None: 0.0}[gripper]]
        return TeleopCommand(np.zeros(6), None, {"phase_" + self.phase: True}, active=True, timestamp=0.0,
                             action=np.array(action))
