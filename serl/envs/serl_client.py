"""The env's robot when it is a lab's SERL / HIL-SERL Flask server (``--env.robot-api serl|hil-serl``).

A ``LocalRobot`` over ``SerlHttpBackend``: the guard runs in the env's process with the task's
safety box, so every command, reset hooks included, is clipped here before it reaches SERL's
server, which has no box of its own. Cameras open in the env's process, as in SERL.
"""

from __future__ import annotations

import logging

from robot_servers.backends.serl_http import SerlHttpBackend
from robot_servers.guard import GuardConfig
from serl.envs.franka_env import FrankaEnv
from serl.envs.rewards import make_reward
from serl.envs.robot_client import LocalRobot
from serl.envs.task_config import TaskConfig

log = logging.getLogger("serl.envs.serl_client")

MONITOR_HZ = 50.0  # each check is a /getstate round trip to the SERL server


def serl_robot(url: str, flavor: str, task: TaskConfig) -> LocalRobot:
    """The task's robot behind a SERL server at ``url``; warns what such a server lacks."""
    backend = SerlHttpBackend(url, flavor=flavor)
    cameras = {}
    try:
        if task.cameras:
            from robot_servers.cameras.specs import open_task_cameras  # lazy: camera SDKs only when asked

            cameras = open_task_cameras((), task.cameras)
        missing = [camera.name for camera in task.cameras if camera.name not in cameras]
        if missing:
            raise ValueError(f"task {task.name!r} needs camera(s) {missing}: set CameraSpec.serial in the task "
                             "(with a SERL server the cameras open in the env's process)")
    except Exception:
        for camera in cameras.values():
            camera.close()
        backend.close()
        raise
    if task.safety_box is None:
        log.warning("task %s has no safety box and the SERL server has none either: nothing limits the targets",
                    task.name)
    log.warning("robot API %s at %s: %s", flavor, url, "; ".join(backend.missing_features()))
    return LocalRobot(backend, cameras, GuardConfig(safety_box=task.safety_box, monitor_hz=MONITOR_HZ))


def serl_env(url: str, flavor: str, task: TaskConfig, classifier: bool = False) -> FrankaEnv:
    """``FrankaEnv`` of ``task`` on a SERL server; its reward from a classifier (``classifier``) or the task."""
    if task.reward == "ground_truth" and not classifier:
        raise ValueError(f"env.robot_api={flavor}: a SERL server has no ground-truth scene; use a task whose "
                         "reward is 'classifier' or 'keyboard', or --env.reward-classifier")
    reward_fn = None if task.reward == "ground_truth" else make_reward(task)  # the classifier wrapper rewards
    return FrankaEnv(serl_robot(url, flavor, task), task, reward_fn=reward_fn)
