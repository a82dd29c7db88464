"""Register every example task with ``serl.envs.tasks`` so ``--task PegInsertion`` finds it."""

from __future__ import annotations

import importlib

from serl.envs.task_config import TaskConfig

EXAMPLES = ("peg_insertion", "pcb_insertion", "cable_routing", "object_relocation", "ram_insertion", "usb_insertion")


def example_tasks() -> list[TaskConfig]:
    """Real-arm configs (both object-relocation directions) and the twin variants that exist."""
    tasks = []
    for name in EXAMPLES:
        module = importlib.import_module(f"examples.{name}.config")
        tasks += [module.FORWARD, module.BACKWARD] if name == "object_relocation" else [module.config()]
        if hasattr(module, "sim_config"):
            tasks.append(module.sim_config())
    return tasks


def register_examples() -> list[str]:
    """Add the example tasks to the task registry (idempotent); returns their names."""
    from serl.envs.tasks import register_task

    tasks = example_tasks()
    for task in tasks:
        register_task(task, overwrite=True)
    return [task.name for task in tasks]
