"""Replay buffers in numpy.

`ReplayBuffer` stores each camera frame once: a transition keeps indices into a frame ring for its
observation and next observation. Consecutive transitions of an episode share the frame between
next_obs of one and obs of the next; the final next obs of an episode is stored once. Low-dimensional
entries (state, actions, rewards, ...) are stored per transition. A transition's indices are set at
insert time, so sampling can never pair an observation with a next observation of another episode.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping

import numpy as np

from serl.data.transition import TransitionSpec

SCALAR_KEYS = ("rewards", "masks", "dones")


def image_keys(observation: Mapping) -> tuple[str, ...]:
    """The camera entries of a flat observation: (H, W, C) uint8 arrays, sorted by name."""
    return tuple(sorted(k for k, v in observation.items() if np.ndim(v) == 3 and np.asarray(v).dtype == np.uint8))


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    """np.savez to a temporary file in the same folder, then rename: a crash keeps the old file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ReplayBuffer:
    """Uniform replay over the last `capacity` transitions.

    observation_example: one flat observation, e.g. {"state": (d,) float32, "wrist": (128, 128, 3) uint8};
    (H, W, 3) uint8 entries are cameras and go to the frame ring. `frame_slack` sizes the frame ring at
    capacity * (1 + frame_slack) frames; episodes shorter than 1 / frame_slack steps retire the oldest
    transitions a little early rather than growing memory. Every insert is checked against `spec` (by default
    the example's keys, shapes and dtypes with finite, bounded values).
    """

    def __init__(self, observation_example: Mapping, action_dim: int, capacity: int, *, frame_slack: float = 0.05,
                 extra_keys: tuple[str, ...] = ("grasp_penalty",), seed: int = 0, spec: TransitionSpec | None = None):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if not isinstance(observation_example, Mapping) or not observation_example:
            raise ValueError("observation_example: expected a non-empty flat dict of arrays")
        self.capacity = int(capacity)
        self.action_dim = int(action_dim)
        self.image_keys = image_keys(observation_example)
        self.low_dim_keys = tuple(sorted(k for k in observation_example if k not in self.image_keys))
        self.frame_capacity = self.capacity + max(1, int(np.ceil(self.capacity * frame_slack)))
        self.extra_keys = tuple(extra_keys)
        self.spec = spec or TransitionSpec(observation_example, action_dim)
        self._specs = {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in observation_example.items()}
        self.frames = {k: np.zeros((self.frame_capacity,) + self._specs[k][0], np.uint8) for k in self.image_keys}
        self.obs = {k: np.zeros((self.capacity,) + self._specs[k][0], self._specs[k][1]) for k in self.low_dim_keys}
        self.next_obs = {k: np.zeros_like(v) for k, v in self.obs.items()}
        self.actions = np.zeros((self.capacity, self.action_dim), np.float32)
        self.scalars = {k: np.zeros(self.capacity, np.float32) for k in SCALAR_KEYS + self.extra_keys}
        self.obs_frame = np.zeros(self.capacity, np.int64)  # global frame ids (frame slot = id % frame_capacity)
        self.next_frame = np.zeros(self.capacity, np.int64)
        self.num_inserted = 0  # global transition counter
        self.num_frames = 0  # global frame counter
        self.oldest_valid = 0  # global id of the oldest transition whose frames are still in the ring
        self._open_episode = False  # the last transition did not end its episode
        self.rng = np.random.default_rng(seed)

    # ---- writing ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_inserted - self._oldest()

    def _oldest(self) -> int:
        return max(self.num_inserted - self.capacity, self.oldest_valid)

    @property
    def oldest_id(self) -> int:
        """Global id of the oldest transition still held (ids below it are gone for good)."""
        return self._oldest()

    def _write_frames(self, obs: Mapping) -> int:
        slot = self.num_frames % self.frame_capacity
        for k in self.image_keys:
            self.frames[k][slot] = obs[k]
        self.num_frames += 1
        # transitions whose obs frame was just overwritten are gone
        limit = self.num_frames - self.frame_capacity
        self.oldest_valid = max(self.oldest_valid, self.num_inserted - self.capacity)
        while self.oldest_valid < self.num_inserted and self.obs_frame[self.oldest_valid % self.capacity] < limit:
            self.oldest_valid += 1
        return self.num_frames - 1

    def _continues_last(self, obs: Mapping) -> bool:
        if not self._open_episode or not self.image_keys:
            return False
        last = (self.num_frames - 1) % self.frame_capacity
        return all(np.array_equal(self.frames[k][last], obs[k]) for k in self.image_keys)

    def insert(self, transition: Mapping) -> None:
        """Add one transition {observations, actions, rewards, masks, dones, next_observations[, grasp_penalty]}."""
        self.spec.check(transition)
        obs, next_obs = transition["observations"], transition["next_observations"]
        if self.image_keys:
            # next_obs of the previous step is reused when it is this obs (checked, so interleaved streams stay correct)
            obs_id = self.num_frames - 1 if self._continues_last(obs) else self._write_frames(obs)
            # reserve the slot before writing next_obs so the retire loop sees this transition's obs id
            slot = self.num_inserted % self.capacity
            self.obs_frame[slot] = obs_id
            self.next_frame[slot] = self.num_frames
            self.num_inserted += 1
            self._write_frames(next_obs)
        else:
            slot = self.num_inserted % self.capacity
            self.num_inserted += 1
        for k in self.low_dim_keys:
            self.obs[k][slot] = obs[k]
            self.next_obs[k][slot] = next_obs[k]
        self.actions[slot] = transition["actions"]
        for k in SCALAR_KEYS:
            self.scalars[k][slot] = transition[k]
        for k in self.extra_keys:
            self.scalars[k][slot] = transition.get(k, 0.0)
        self._open_episode = not bool(transition["dones"])

    def start_at(self, num_inserted: int, num_frames: int, open_episode: bool, last_frame: Mapping | None) -> None:
        """Continue the global counters of an earlier buffer whose older transitions are gone for good.

        The next insert gets id ``num_inserted``; ``last_frame`` (the previous transition's next observation,
        when its episode is still open) lets that insert share its frame exactly as the earlier buffer did.
        """
        if self.num_inserted or self.num_frames:
            raise ValueError("start_at: the buffer must be empty")
        self.num_inserted = self.oldest_valid = int(num_inserted)
        self.num_frames = int(num_frames)
        self._open_episode = bool(open_episode)
        if self.image_keys and self._open_episode and self.num_frames:
            slot = (self.num_frames - 1) % self.frame_capacity
            for k in self.image_keys:
                self.frames[k][slot] = last_frame[k]

    def insert_many(self, transitions) -> None:
        for t in transitions:
            self.insert(t)

    # ---- reading ---------------------------------------------------------------------------------
    def sample_indices(self, batch_size: int) -> np.ndarray:
        if len(self) == 0:
            raise ValueError("cannot sample from an empty buffer")
        return self.rng.integers(self._oldest(), self.num_inserted, size=batch_size)

    def frame_slots(self, global_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame-ring slots of the given transitions' observations and next observations."""
        slots = global_ids % self.capacity
        return self.obs_frame[slots] % self.frame_capacity, self.next_frame[slots] % self.frame_capacity

    @property
    def oldest_frame_id(self) -> int | None:
        """Global id of the oldest frame a held transition uses (None when the buffer holds none)."""
        return int(self.obs_frame[self._oldest() % self.capacity]) if len(self) and self.image_keys else None

    def gather(self, global_ids: np.ndarray, frames: bool = True) -> dict:
        """Batch dict for the given global transition ids (``frames=False``: without the camera entries)."""
        slots = global_ids % self.capacity
        obs = {k: self.obs[k][slots] for k in self.low_dim_keys}
        next_obs = {k: self.next_obs[k][slots] for k in self.low_dim_keys}
        if self.image_keys and frames:
            obs_slots, next_slots = self.frame_slots(global_ids)
            for k in self.image_keys:
                obs[k] = self.frames[k][obs_slots]
                next_obs[k] = self.frames[k][next_slots]
        batch = {"observations": obs, "next_observations": next_obs, "actions": self.actions[slots]}
        batch.update({k: v[slots] for k, v in self.scalars.items()})
        return batch

    def sample(self, batch_size: int) -> dict:
        """Uniform sample of `batch_size` transitions as a dict of stacked numpy arrays."""
        return self.gather(self.sample_indices(batch_size))

    @property
    def nbytes(self) -> int:
        arrays = list(self.frames.values()) + list(self.obs.values()) + list(self.next_obs.values())
        arrays += [self.actions, self.obs_frame, self.next_frame] + list(self.scalars.values())
        return int(sum(a.nbytes for a in arrays))

    # ---- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        meta = {
            "capacity": self.capacity, "action_dim": self.action_dim, "frame_capacity": self.frame_capacity,
            "num_inserted": self.num_inserted, "num_frames": self.num_frames, "oldest_valid": self.oldest_valid,
            "open_episode": self._open_episode, "rng": self.rng.bit_generator.state,
            "specs": {k: [list(s), np.dtype(d).str] for k, (s, d) in self._specs.items()},
            "extra_keys": list(self.extra_keys),
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        arrays.update({f"frames/{k}": v for k, v in self.frames.items()})
        arrays.update({f"obs/{k}": v for k, v in self.obs.items()})
        arrays.update({f"next_obs/{k}": v for k, v in self.next_obs.items()})
        arrays.update({f"scalars/{k}": v for k, v in self.scalars.items()})
        arrays.update(actions=self.actions, obs_frame=self.obs_frame, next_frame=self.next_frame)
        return arrays

    def save(self, path: str | os.PathLike) -> None:
        """Write everything (arrays, counters, sampling rng) to `path` (.npz) atomically."""
        atomic_savez(path, **self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReplayBuffer":
        """Read a buffer written by `save`."""
        with np.load(os.fspath(path), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            example = {k: np.zeros(s, np.dtype(d)) for k, (s, d) in meta["specs"].items()}
            buf = cls(example, meta["action_dim"], meta["capacity"], extra_keys=tuple(meta["extra_keys"]))
            if buf.frame_capacity != meta["frame_capacity"]:
                buf.frame_capacity = meta["frame_capacity"]
            for k in buf.image_keys:
                buf.frames[k] = data[f"frames/{k}"]
            for k in buf.low_dim_keys:
                buf.obs[k] = data[f"obs/{k}"]
                buf.next_obs[k] = data[f"next_obs/{k}"]
            for k in buf.scalars:
                buf.scalars[k] = data[f"scalars/{k}"]
            buf.actions = data["actions"]
            buf.obs_frame = data["obs_frame"]
            buf.next_frame = data["next_frame"]
        buf.num_inserted, buf.num_frames = meta["num_inserted"], meta["num_frames"]
        buf.oldest_valid, buf._open_episode = meta["oldest_valid"], meta["open_episode"]
        buf.rng.bit_generator.state = meta["rng"]
        if len(buf):  # a damaged or tampered file is refused, not sampled
            check_finite(buf.gather(np.arange(buf.oldest_id, buf.num_inserted)), os.fspath(path))
        return buf


class MixedSampler:
    """Samples a batch with a fixed fraction from a demo buffer and the rest from an online buffer
    (RLPD's symmetric sampling at demo_fraction=0.5). An empty demo buffer gives all-online batches."""

    def __init__(self, online: ReplayBuffer, demo: ReplayBuffer | None, demo_fraction: float = 0.5):
        if not 0.0 <= demo_fraction <= 1.0:
            raise ValueError(f"demo_fraction must be in [0, 1], got {demo_fraction}")
        self.online, self.demo, self.demo_fraction = online, demo, demo_fraction

    def sample(self, batch_size: int) -> dict:
        """Online rows first, demo rows last; ``batch["demo"]`` is 1.0 on the demo buffer's rows."""
        num_demo = int(round(batch_size * self.demo_fraction)) if self.demo is not None and len(self.demo) else 0
        if num_demo == 0:
            return _tagged(self.online.sample(batch_size), 0.0)
        if num_demo == batch_size or len(self.online) == 0:
            return _tagged(self.demo.sample(batch_size), 1.0)
        return concat_batches(_tagged(self.online.sample(batch_size - num_demo), 0.0),
                              _tagged(self.demo.sample(num_demo), 1.0))


def _tagged(batch: dict, demo: float) -> dict:
    batch["demo"] = np.full(batch["rewards"].shape[0], demo, np.float32)
    return batch


def check_finite(batch: Mapping, name: str) -> None:
    """FloatingPointError naming the entry when a float array of ``batch`` (nested dicts) holds NaN or inf."""
    for key, value in batch.items():
        if isinstance(value, Mapping):
            check_finite(value, f"{name}: {key}")
        elif value.dtype.kind == "f" and not np.isfinite(value).all():
            raise FloatingPointError(f"{name}: non-finite values in {key}")


def concat_batches(*batches: dict) -> dict:
    """Concatenate batch dicts (nested dicts of arrays) along the first axis."""
    first = batches[0]
    out = {}
    for k, v in first.items():
        if isinstance(v, Mapping):
            out[k] = concat_batches(*(b[k] for b in batches))
        else:
            out[k] = np.concatenate([b[k] for b in batches], axis=0)
    return out
