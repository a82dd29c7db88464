"""``EnvConfig``: which env a run uses (task, robot, reward), as the runtime configs and ``build_env`` take it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from robot_servers.overrides import parse_overrides


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which env the actor runs (and whose spaces the learner builds its agent for)."""

    task: str = "PandaPickCube"
    """Task name from serl.envs.tasks (e.g. PandaPickCube, PandaPegInsertion)."""
    pixels: bool = False
    """Use the task's camera observations."""
    robot_url: str | None = None
    """Robot server URL (HttpRobotClient); None runs the twin in-process (LocalRobot)."""
    robot_token: str | None = None
    """Bearer token for the robot server."""
    robot_api: Literal["native", "serl", "hil-serl"] = "native"
    """What answers at robot_url: this suite's robot server, or a SERL / HIL-SERL Flask server (franka_server.py)."""
    overrides: tuple[str, ...] = ()
    """Task config overrides as key=value (value parsed as JSON when possible), e.g. max_episode_steps=50."""
    task_module: str | None = None
    """Module name or .py file imported first, to register your own tasks (serl.envs.tasks.register_task)."""
    reward_classifier: Path | None = None
    """Checkpoint directory from `serl classifier train`: the reward comes from that success classifier."""
    classifier_k: int = 1
    """Consecutive steps above the classifier's threshold that count as success (reward 1, episode end)."""
    grasp_penalty: float = 0.0
    """Cost of a step that changes the gripper (open<->close), paid by the grasp critic only (HIL-SERL: 0.02)."""

    def __post_init__(self):
        if self.robot_api not in ("native", "serl", "hil-serl"):
            raise ValueError(f"robot_api: expected 'native', 'serl' or 'hil-serl', got {self.robot_api!r}")
        if self.robot_api != "native" and self.robot_url is None:
            raise ValueError(f"robot_api={self.robot_api!r} needs robot_url (the SERL server, e.g. http://host:5000/)")
        if not (math.isfinite(self.grasp_penalty) and self.grasp_penalty >= 0):
            raise ValueError(f"grasp_penalty: expected a finite value >= 0, got {self.grasp_penalty}")

    def override_dict(self) -> dict:
        """``overrides`` as a dict; ValueError naming a malformed entry."""
        return parse_overrides(self.overrides, "env.overrides")

    def identity(self) -> dict:
        """What actor and learner must agree on (hashed into the transport handshake)."""
        return {"task": self.task, "pixels": self.pixels, "overrides": sorted(self.overrides),
                "task_module": self.task_module, "grasp_penalty": self.grasp_penalty}
