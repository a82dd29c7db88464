"""Import to register the example tasks and the object-relocation task cycle, e.g. ``serl actor --env.task-module
examples.tasks`` (run from the repository root)."""

from examples.registry import register_examples

register_examples()
