"""Register every example task with ``serl.envs.tasks`` so ``--task PegInsertion`` finds it."""

from __future__ import annotations

from examples.cable_routing import config as cable_routing
from examples.object_relocation import config as object_relocation
from examples.pcb_insertion import config as pcb_insertion
from examples.peg_insertion import config as peg_insertion
from examples.ram_insertion import config as ram_insertion
from examples.usb_insertion import config as usb_insertion
from serl.envs.task_config import TaskConfig
from serl.envs.task_cycles import register_cycle
from serl.envs.tasks import register_task


def example_tasks() -> list[TaskConfig]:
    """Real-arm configs (both object-relocation directions) and the twin variants that exist."""
    return [
        peg_insertion.config(), peg_insertion.sim_config(),
        pcb_insertion.config(),
        cable_routing.config(),
        object_relocation.FORWARD, object_relocation.BACKWARD, object_relocation.sim_config(),
        ram_insertion.config(),
        usb_insertion.config(),
    ]


def register_examples() -> list[str]:
    """Add the example tasks (and the object-relocation task cycle) to the registries (idempotent); returns the
    tasks' names."""
    tasks = example_tasks()
    for task in tasks:
        register_task(task, overwrite=True)
    register_cycle(object_relocation.CYCLE, overwrite=True)
    return [task.name for task in tasks]
