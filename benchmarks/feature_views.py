"""What a finite number of cached views does to DrQ: the one-step dot task of tests/test_learning.py (a 16x16 image
is all that shows where to act), trained with a frozen small backbone on cached features of K fixed shifted views
per frame, against fresh random shifts per sample (the backbone recomputed), and against a trained backbone.

Prints one JSON object: per setting the final deterministic return per seed, their mean and the wall seconds.
``--quick``: one seed, two settings, a short run (CI smoke test).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

SETTINGS = {
    "trained_backbone_fresh_shifts": {},
    "frozen_fresh_shifts": {"freeze_backbone": True, "feature_cache": False},
    "frozen_cached_k1": {"freeze_backbone": True, "feature_views": 1},
    "frozen_cached_k2": {"freeze_backbone": True, "feature_views": 2},
    "frozen_cached_k4": {"freeze_backbone": True, "feature_views": 4},
    "frozen_cached_k16": {"freeze_backbone": True, "feature_views": 16},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    import gymnasium as gym

    from serl.agents import SACConfig
    from serl.agents.training import LoopConfig, train
    from test_learning import DotTarget

    if "DotTarget-v0" not in gym.registry:
        gym.register("DotTarget-v0", entry_point=DotTarget, max_episode_steps=1)
    settings = {k: SETTINGS[k] for k in ("frozen_fresh_shifts", "frozen_cached_k2")} if args.quick else SETTINGS
    seeds, steps = (1, 150) if args.quick else (args.seeds, 700)
    report = {"benchmark": "feature_views", "quick": args.quick, "task": "DotTarget (tests/test_learning.py)",
              "env_steps": steps, "settings": {}}
    for name, extra in settings.items():
        returns, started = [], time.perf_counter()
        for seed in range(seeds):
            cfg = SACConfig(hidden_dims=(64, 64), encoder="small", encoder_latent_dim=32, augment_pad=1, discount=0.0,
                            init_temperature=0.05, **extra)
            _, result = train(cfg, LoopConfig(env_id="DotTarget-v0", total_steps=steps, random_steps=100,
                                              batch_size=32, eval_episodes=50, seed=seed))
            returns.append(round(result["final_return"], 3))
        report["settings"][name] = {"final_return_per_seed": returns, "mean": round(float(np.mean(returns)), 3),
                                    "std": round(float(np.std(returns)), 3),
                                    "wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
