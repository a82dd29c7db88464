"""Reward-classifier inference per env step on CPU: two 128×128 cameras, frames in, probability out.

Times ``RewardClassifier.probability`` (preprocessing, the jitted model, the device→host copy) for the
default encoder (frozen ResNet-10, 16 filters, GroupNorm, spatial embedding) and, outside ``--quick``,
the standard-width ResNet-10 (64 filters, what ImageNet-pretrained weights have) and the small conv net.
Target: <= 5 ms per step (p50). Prints one JSON object. ``--quick``: the default encoder, 30 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reward_classifiers.checkpoint import ClassifierCheckpoint, save_checkpoint  # noqa: E402
from reward_classifiers.model import CameraInput, ClassifierSpec, EncoderConfig, init_params  # noqa: E402
from reward_classifiers.runtime import RewardClassifier  # noqa: E402

TARGET_MS = 5.0


def measure(encoder: EncoderConfig, steps: int, warmup: int = 5) -> dict:
    spec = ClassifierSpec((CameraInput("wrist", (128, 128)), CameraInput("front", (128, 128))), encoder)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, ClassifierCheckpoint(spec, init_params(spec), 0.5))
        started = time.perf_counter()
        classifier = RewardClassifier.load(tmp)  # compiles
        load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    frames = [{c: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for c in ("wrist", "front")} for _ in range(8)]
    for i in range(warmup):
        classifier.probability(frames[i % len(frames)])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        classifier.probability(frames[i % len(frames)])
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {
        "encoder": {"backbone": encoder.backbone, "resnet_filters": encoder.resnet_filters,
                    "freeze_backbone": encoder.freeze_backbone},
        "steps": steps,
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3),
                       "mean": round(float(ms.mean()), 3)},
        "load_and_compile_s": round(load_s, 2),
        "meets_target": bool(np.percentile(ms, 50) <= TARGET_MS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default encoder only, 30 steps (CI smoke mode)")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    steps = 30 if args.quick else args.steps
    results = {"default": measure(EncoderConfig(), steps)}
    if not args.quick:
        results["resnet10_64_filters"] = measure(EncoderConfig(resnet_filters=64), steps)
        results["small_conv"] = measure(EncoderConfig(backbone="small"), steps)
    import jax

    report = {
        "benchmark": "classifier_inference",
        "what": "RewardClassifier.probability per env step, two 128x128 uint8 cameras, batch 1, CPU",
        "target_ms_p50": TARGET_MS,
        "results": results,
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
                    "device": str(jax.devices()[0]), "load_avg_1min": round(os.getloadavg()[0], 2)},
        "peer": "none measured: SERL's classifier (same ResNet-10 at 64 filters) is the resnet10_64_filters row",
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
