"""``serl serve``: the robot server (twin, ROS 2 or libfranka backend) over HTTP, set up for a task.

The task (``--task``) gives the server its safety box, its cameras and, on the twin, the robot, scene
and impedance; ``python -m robot_servers`` is the same server without a task.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Optional

from robot_servers.serve import ServeConfig, ServedTask, serve as serve_robot


SERVE_COMMAND = (sys.executable, "-m", "serl.cli.main", "serve")  # ``serl serve`` as a child process


@dataclasses.dataclass(frozen=True)
class ServeCommand(ServeConfig):
    task: Optional[str] = None  # registered task name: safety box, cameras, robot and scene
    task_module: Optional[str] = None  # module or .py file that registers extra tasks


def served_task(name: str, task_module: str | None = None) -> ServedTask:
    """What the robot server needs to know of task ``name`` (one arm, or a two-arm task's both)."""
    from serl.envs.bimanual import get_bimanual_task, is_bimanual
    from serl.envs.tasks import get_task, twin_options
    from serl.runtime.envs import import_task_module

    if task_module:
        import_task_module(task_module)
    if is_bimanual(name):
        pair = get_bimanual_task(name)
        return ServedTask(name=pair.name, twin=twin_options(pair.left),
                          arms={"left": pair.left.safety_box, "right": pair.right.safety_box},
                          layout={"layout": pair.layout, "separation": pair.separation}, clearance=pair.clearance)
    task = get_task(name)
    return ServedTask(name=task.name, safety_box=task.safety_box, cameras=task.cameras, twin=twin_options(task))


def serve(cmd: ServeCommand) -> None:
    fields = {f.name: getattr(cmd, f.name) for f in dataclasses.fields(ServeConfig)}
    task = None if cmd.task is None else served_task(cmd.task, cmd.task_module)
    serve_robot(ServeConfig(**fields), task)


__all__ = ["SERVE_COMMAND", "ServeCommand", "serve", "served_task"]
