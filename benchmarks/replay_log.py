"""Replay data on disk: bytes per stored transition, the fsync cost of one acknowledged batch, and the time to
rebuild a buffer on resume, for state and camera transitions. Prints one JSON object.

The peer is the earlier on-disk form: the whole buffer written as one .npz at every checkpoint (its size at
the default capacity of 200,000 is what each checkpoint wrote, however little the buffer held).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from serl.data.replay import ReplayBuffer
from serl.data.replay_log import ReplayLog
from serl.data.transition import make_transition

EPISODE = 100
BATCH = 64  # the actor's batch size: one append + fsync per acknowledged batch


def observation(kind: str, rng: np.random.Generator) -> dict:
    obs = {"state": rng.standard_normal(19).astype(np.float32)}
    if kind == "pixels":
        obs["front"] = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        obs["wrist"] = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    return obs


def transitions(kind: str, count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out, obs = [], observation(kind, rng)
    for i in range(count):
        last = i % EPISODE == EPISODE - 1
        next_obs = observation(kind, rng)
        out.append(make_transition(obs, rng.uniform(-1, 1, 7), 0.0, next_obs, terminated=False, truncated=last,
                                   intervened=False, grasp_penalty=0.0))
        obs = observation(kind, rng) if last else next_obs
    return out


def measure(kind: str, count: int, folder: Path) -> dict:
    data = transitions(kind, count)
    log = ReplayLog(folder / kind)
    fsync_ms = []
    for i in range(0, count, BATCH):
        started = time.perf_counter()
        log.append(data[i:i + BATCH], actor="bench", session="s", seq=i // BATCH)
        fsync_ms.append(1e3 * (time.perf_counter() - started))
    log.close()
    disk = log.disk_bytes()
    started = time.perf_counter()
    records = ReplayLog(folder / kind).replay()
    header = next(records)
    buffer = ReplayBuffer(data[0]["observations"], 7, count)
    buffer.start_at(header["num_inserted"], header["num_frames"], header["open_episode"], header.get("last_frame"))
    for record in records:
        buffer.insert_many(record["transitions"])
    rebuild_s = time.perf_counter() - started
    assert len(buffer) == count
    peer = folder / f"{kind}.npz"
    buffer.save(peer)
    full = ReplayBuffer(data[0]["observations"], 7, 200_000 if kind == "state" else 20_000).nbytes
    return {
        "transitions": count,
        "log_bytes": disk,
        "log_bytes_per_transition": round(disk / count, 1),
        "append_fsync_ms_per_batch_p50": round(float(np.percentile(fsync_ms, 50)), 3),
        "append_fsync_ms_per_batch_p99": round(float(np.percentile(fsync_ms, 99)), 3),
        "rebuild_s_per_10k": round(rebuild_s * 10_000 / count, 3),
        "peer_npz_bytes_same_content": os.path.getsize(peer),
        "peer_npz_bytes_at_default_capacity": full,
        "peer_over_log_same_content": round(os.path.getsize(peer) / disk, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    args = parser.parse_args()
    counts = {"state": 1_000, "pixels": 100} if args.quick else {"state": 10_000, "pixels": 1_000}
    with tempfile.TemporaryDirectory() as tmp:
        report = {kind: measure(kind, count, Path(tmp)) for kind, count in counts.items()}
    report["batch_transitions"] = BATCH
    print(json.dumps(report))


if __name__ == "__main__":
    main()
