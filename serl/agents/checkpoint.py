"""Checkpoints: the agent (params, optimiser states, target params, rng, step) with orbax, and replay
buffers as .npz files beside it.

Commit order keeps every visible checkpoint complete: buffers for step S are written first (each
atomically), then orbax writes the agent to a temporary folder and renames it into place. A crash
before that rename leaves the previous step as the latest; buffer files of steps orbax does not list
are ignored and pruned.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any, Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from serl.data.replay import ReplayBuffer

_BUFFER_FILE = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)_(?P<step>\d+)\.npz$")


class Checkpointer:
    """Saves and restores agent + buffers under `directory`, keeping the last `max_to_keep` steps."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self.buffer_dir = os.path.join(self.directory, "buffers")
        os.makedirs(self.buffer_dir, exist_ok=True)
        self.agent_dir = os.path.join(self.directory, "agent")
        self._remove_partial()  # a kill during an earlier save
        self.manager = ocp.CheckpointManager(
            self.agent_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False),
        )

    def _remove_partial(self) -> None:
        """Delete what an interrupted or failed save left: orbax's temporary folders and our temporary files."""
        for folder, pattern in ((self.agent_dir, "orbax-checkpoint-tmp"), (self.buffer_dir, ".tmp-")):
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    if pattern in name:
                        path = os.path.join(folder, name)
                        if os.path.isdir(path):
                            shutil.rmtree(path)
                        else:
                            os.unlink(path)

    def _buffer_path(self, name: str, step: int) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ValueError(f"buffer name {name!r}: use letters, digits, '_' or '-'")
        return os.path.join(self.buffer_dir, f"{name}_{step}.npz")

    def save(self, step: int, agent: Any, buffers: Mapping[str, ReplayBuffer] | None = None,
             metadata: Mapping | None = None) -> None:
        """Write buffers, then the agent; `metadata` is a JSON-able dict stored with the agent."""
        step = int(step)
        for name, buffer in (buffers or {}).items():
            buffer.save(self._buffer_path(name, step))
        meta = {"step": step, "buffers": sorted(buffers or {}), **(metadata or {})}
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    agent=ocp.args.StandardSave(flax.serialization.to_state_dict(agent)), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self.manager.wait_until_finished()
        except BaseException:
            self._remove_partial()
            raise
        self._prune_buffers()

    def _prune_buffers(self) -> None:
        kept = set(self.manager.all_steps())
        for fname in os.listdir(self.buffer_dir):
            match = _BUFFER_FILE.match(fname)
            if match and int(match["step"]) not in kept:
                os.unlink(os.path.join(self.buffer_dir, fname))

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, agent_template: Any, step: int | None = None) -> tuple[Any, dict[str, ReplayBuffer], dict]:
        """Return (agent, buffers by name, metadata) of `step` (default: latest). `agent_template` is an
        agent created with the same config and observation/action shapes."""
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        template_state = flax.serialization.to_state_dict(agent_template)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(agent=ocp.args.StandardRestore(template_state), meta=ocp.args.JsonRestore())
        )
        meta = dict(restored["meta"])
        # host arrays with a fresh agent's dtypes: orbax returns device-committed arrays, which would
        # give the restored agent a new jit signature and a full recompile of update()
        state = jax.tree_util.tree_map(
            lambda ref, value: jnp.asarray(np.asarray(value), dtype=jnp.asarray(ref).dtype),
            template_state,
            restored["agent"],
        )
        agent = flax.serialization.from_state_dict(agent_template, state)
        buffers = {name: ReplayBuffer.load(self._buffer_path(name, step)) for name in meta.get("buffers", [])}
        return agent, buffers, meta

    def close(self) -> None:
        self.manager.close()
