"""Frozen-backbone features of a replay buffer's frames, computed once per frame instead of once per sample.

With a frozen image backbone, recomputing its output for every row of every minibatch repeats the same work
many times over (each frame is sampled about batch_size * utd_ratio times per env step it stays in the buffer).
``FeatureCache`` runs the backbone once per stored frame for ``num_views`` fixed shifted views (DrQ's random
shift, drawn when the frame arrives) and samples batches that carry those features in place of the frames.

View ``j`` of global frame ``i`` is shifted by offsets drawn from a generator seeded with ``(seed, i)``, so a
buffer rebuilt from its logs gets the very same features. With ``num_views`` views DrQ sees at most that many
of the ``(2 * pad + 1) ** 2`` shifts of each frame, fixed for the frame's life in the buffer, instead of a
fresh one per sample.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from serl.data.replay import ReplayBuffer

Encode = Callable[[str, np.ndarray, np.ndarray], np.ndarray]
"""(camera, frames (N, H, W, 3) uint8, offsets (N, K, 2) int32) -> backbone features (N, K, h, w, c)."""

MAX_CHUNK = 64  # frames per backbone call; calls are padded to a power of two so a handful of shapes compile


class FeatureCache:
    """Cached backbone features of every frame ``buffer`` holds; samples like the buffer (``sample``, ``len``).

    The camera entries of a sampled batch are float arrays (B, h, w, c), one random cached view per row and per
    observation, drawn with the buffer's own generator (restored on resume, like its transition draws).
    """

    def __init__(self, buffer: ReplayBuffer, encode: Encode, num_views: int, pad: int, *, seed: int = 0,
                 dtype: str | np.dtype = np.float16):
        if not buffer.image_keys:
            raise ValueError("FeatureCache: the buffer stores no camera frames")
        if not (isinstance(num_views, (int, np.integer)) and num_views >= 1):
            raise ValueError(f"FeatureCache: num_views must be an integer >= 1, got {num_views!r}")
        if pad < 0:
            raise ValueError(f"FeatureCache: pad must be >= 0, got {pad}")
        self.buffer, self.encode, self.num_views, self.pad, self.seed = buffer, encode, int(num_views), int(pad), seed
        self.dtype = np.dtype(dtype)
        self.synced = 0  # global id of the first frame not yet encoded
        self.features: dict[str, np.ndarray] = {}
        for key in buffer.image_keys:
            frame = buffer.frames[key][:1]
            shape = np.shape(encode(key, frame, np.zeros((1, 1, 2), np.int32)))[2:]
            # np.zeros maps pages on first write: resident memory grows with the frames actually stored
            self.features[key] = np.zeros((buffer.frame_capacity, self.num_views) + tuple(shape), self.dtype)

    @classmethod
    def from_config(cls, buffer: ReplayBuffer, encode: Encode, config, seed: int = 0) -> "FeatureCache":
        """The cache an agent config asks for: its ``feature_views``, ``augment_pad`` and ``feature_dtype``."""
        return cls(buffer, encode, config.feature_views, config.augment_pad, seed=seed, dtype=config.feature_dtype)

    def __len__(self) -> int:
        return len(self.buffer)

    @property
    def bytes_per_frame(self) -> int:
        """Feature bytes per stored frame, over all cameras and views."""
        return int(sum(v[0].nbytes for v in self.features.values()))

    def offsets(self, frame_ids: np.ndarray) -> np.ndarray:
        """Each frame's view offsets, (N, num_views, 2) in [0, 2 * pad]: a function of (seed, frame id) only."""
        return np.stack([np.random.default_rng((self.seed, int(i))).integers(0, 2 * self.pad + 1, (self.num_views, 2))
                         for i in frame_ids]).astype(np.int32)

    def sync(self) -> int:
        """Encode the frames that arrived since the last call; returns how many."""
        oldest = self.buffer.oldest_frame_id
        if oldest is None:
            return 0
        start, end = max(self.synced, oldest), self.buffer.num_frames
        for chunk_start in range(start, end, MAX_CHUNK):
            ids = np.arange(chunk_start, min(chunk_start + MAX_CHUNK, end))
            n = len(ids)
            padded = np.concatenate([ids, np.full(_bucket(n) - n, ids[-1])])
            slots = padded % self.buffer.frame_capacity
            offsets = self.offsets(padded)
            for key, store in self.features.items():
                out = np.asarray(self.encode(key, self.buffer.frames[key][slots], offsets))
                store[slots[:n]] = out[:n]
        self.synced = max(self.synced, end)
        return max(0, end - start)

    def gather(self, global_ids: np.ndarray) -> dict:
        """The buffer's batch for these transitions with cached features in place of frames."""
        self.sync()
        batch = self.buffer.gather(global_ids, frames=False)
        obs_slots, next_slots = self.buffer.frame_slots(global_ids)
        views = self.buffer.rng.integers(0, self.num_views, (2, len(global_ids)))
        for key, store in self.features.items():
            batch["observations"][key] = store[obs_slots, views[0]]
            batch["next_observations"][key] = store[next_slots, views[1]]
        return batch

    def sample(self, batch_size: int) -> dict:
        return self.gather(self.buffer.sample_indices(batch_size))


def _bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()

