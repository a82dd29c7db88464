"""Training: balanced minibatches, random shift + colour jitter, held-out split by episode, early stopping
on the held-out loss, threshold for a target precision, checkpoint with the camera/crop config."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reward_classifiers.checkpoint import ClassifierCheckpoint
from reward_classifiers.data import LabelledFrames, split_by_episode
from reward_classifiers.evaluate import binary_metrics, threshold_for_precision
from reward_classifiers.model import ClassifierSpec, build_model, init_params
from serl.agents.augment import random_shift


@dataclasses.dataclass(frozen=True)
class ClassifierTrainingParams:
    """Hyper-parameters of classifier training: steps, batches, augmentation, early stopping, threshold."""

    max_steps: int = 2000
    """Most gradient steps (early stopping usually ends sooner)."""
    min_steps: int = 100
    """Early stopping does not stop before this many steps."""
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    holdout: float = 0.2
    """Share of episodes held out for early stopping, the threshold and the report."""
    balance: bool = True
    """Draw half of each batch from the positives (they are rare)."""
    shift_pad: int = 4
    """DrQ random shift in pixels (0 = off)."""
    color_jitter: float = 0.2
    """Brightness / contrast / saturation jitter strength (0 = off)."""
    eval_every: int = 25
    patience: int = 6
    """Held-out evaluations without improvement before stopping."""
    target_precision: float = 0.99
    seed: int = 0
    pretrained_backbone: Path | None = None
    """Backbone weights (msgpack/npz, serl.networks.save_backbone_params layout) loaded into every camera's encoder."""

    def __post_init__(self):
        if self.max_steps < 1 or self.batch_size < 2 or self.eval_every < 1 or self.patience < 1:
            raise ValueError("max_steps, eval_every and patience must be >= 1, batch_size >= 2")
        if not 0.0 < self.target_precision <= 1.0:
            raise ValueError(f"target_precision: must be in (0, 1], got {self.target_precision}")
        if self.shift_pad < 0 or self.color_jitter < 0:
            raise ValueError("shift_pad and color_jitter must be >= 0")


@dataclasses.dataclass
class ClassifierTrainingResult:
    """The best held-out checkpoint, the evaluation history and the split it was chosen on."""

    checkpoint: ClassifierCheckpoint
    history: list[dict]
    train_index: np.ndarray
    heldout_index: np.ndarray
    heldout_probs: np.ndarray


def color_jitter(rng, images: jnp.ndarray, strength: float) -> jnp.ndarray:
    """Per-sample brightness, contrast and saturation jitter; (B, H, W, 3) → float32 in [0, 255]."""
    x = images.astype(jnp.float32)
    b = x.shape[0]
    k1, k2, k3 = jax.random.split(rng, 3)
    brightness = jax.random.uniform(k1, (b, 1, 1, 1), minval=1 - strength, maxval=1 + strength)
    contrast = jax.random.uniform(k2, (b, 1, 1, 1), minval=1 - strength, maxval=1 + strength)
    saturation = jax.random.uniform(k3, (b, 1, 1, 1), minval=1 - strength, maxval=1 + strength)
    x = x * brightness
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * contrast + mean
    gray = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - gray) * saturation + gray
    return jnp.clip(x, 0.0, 255.0)


def _trainable_labels(params: Any, frozen: bool) -> Any:
    flat = flax.traverse_util.flatten_dict(params)
    labels = {k: "frozen" if frozen and "backbone" in k else "train" for k in flat}
    return flax.traverse_util.unflatten_dict(labels)


def make_predict(spec: ClassifierSpec) -> Callable:
    """Jitted (params, model inputs) → success probability per sample."""
    model = build_model(spec)
    return jax.jit(lambda params, images: jax.nn.sigmoid(model.apply({"params": params}, images)))


def predict_frames(spec: ClassifierSpec, params: Any, images: dict[str, np.ndarray], batch_size: int = 128,
                   predict: Callable | None = None) -> np.ndarray:
    """Probabilities for stacked env frames (preprocessed here), in fixed-size batches (one compilation)."""
    predict = predict or make_predict(spec)
    inputs = spec.preprocess(images)
    n = len(next(iter(inputs.values())))
    out = np.empty(n, np.float32)
    for start in range(0, n, batch_size):
        chunk = {k: v[start:start + batch_size] for k, v in inputs.items()}
        size = len(next(iter(chunk.values())))
        if size < batch_size:  # pad the last batch to keep one shape
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - size, 0)]) for k, v in chunk.items()}
        out[start:start + size] = np.asarray(predict(params, chunk))[:size]
    return out


def train_classifier(
    frames: LabelledFrames,
    spec: ClassifierSpec,
    cfg: ClassifierTrainingParams = ClassifierTrainingParams(),
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ClassifierTrainingResult:
    """Train on ``frames`` (images keyed by ``spec``'s camera names) and return the best held-out checkpoint."""
    for cam in spec.cameras:
        if cam.name not in frames.images:
            raise ValueError(f"camera {cam.name!r}: not in the data (it has {list(frames.cameras)})")
        if frames.image_size(cam.name) != tuple(cam.image_size):
            raise ValueError(f"camera {cam.name!r}: data frames are {frames.image_size(cam.name)}, spec says {cam.image_size}")
    if frames.labels.all() or not frames.labels.any():
        raise ValueError(f"labels: need both positives and negatives, got {frames.summary()}")
    train_idx, held_idx = split_by_episode(frames, cfg.holdout, cfg.seed)
    if not frames.labels[train_idx].any() or frames.labels[train_idx].all():
        raise ValueError("the training split has only one class: record more episodes or change holdout")
    inputs = spec.preprocess(frames.images)
    labels = frames.labels.astype(np.float32)

    model = build_model(spec)
    params = init_params(spec, cfg.seed)
    if cfg.pretrained_backbone is not None:
        from serl.networks.pretrained import insert_backbone_params, load_backbone_params

        params = dict(params)
        params["encoder"] = insert_backbone_params(params["encoder"], load_backbone_params(cfg.pretrained_backbone),
                                                   source=str(cfg.pretrained_backbone))
    optimizer = optax.multi_transform(
        {"train": optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay), "frozen": optax.set_to_zero()},
        _trainable_labels(params, spec.encoder.freeze_backbone),
    )
    opt_state = optimizer.init(params)
    names = spec.camera_names

    def loss_fn(params, batch, y, rng):
        logits = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        return optax.sigmoid_binary_cross_entropy(logits, y).mean(), logits

    @jax.jit
    def update(params, opt_state, batch, y, rng):
        rng, drop_rng, *aug = jax.random.split(rng, 2 + 2 * len(names))
        batch = dict(batch)
        for i, name in enumerate(names):
            image = batch[name]
            if cfg.shift_pad:
                image = random_shift(aug[2 * i], image, cfg.shift_pad)
            if cfg.color_jitter:
                image = color_jitter(aug[2 * i + 1], image, cfg.color_jitter)
            batch[name] = image
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, y, drop_rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        accuracy = jnp.mean((logits > 0) == (y > 0.5))
        return optax.apply_updates(params, updates), opt_state, loss, accuracy

    predict = make_predict(spec)
    held_batch = min(128, max(1, len(held_idx)))

    def evaluate(params) -> tuple[float, np.ndarray]:
        probs = predict_frames(spec, params, {k: v[held_idx] for k, v in frames.images.items()}, held_batch, predict)
        y = labels[held_idx]
        eps = 1e-6
        loss = float(-np.mean(y * np.log(probs + eps) + (1 - y) * np.log(1 - probs + eps)))
        return loss, probs

    rng_np = np.random.default_rng(cfg.seed)
    rng = jax.random.PRNGKey(cfg.seed + 1)
    positives = train_idx[labels[train_idx] > 0.5]
    negatives = train_idx[labels[train_idx] < 0.5]
    history: list[dict] = []
    best = (np.inf, params, None, 0)
    evals_without_gain = 0
    started = time.perf_counter()
    bar = _TrainingProgressBar(cfg.max_steps) if progress else None
    try:
        for step in range(1, cfg.max_steps + 1):
            if cfg.balance:
                half = cfg.batch_size // 2
                index = np.concatenate([rng_np.choice(positives, half), rng_np.choice(negatives, cfg.batch_size - half)])
            else:
                index = rng_np.choice(train_idx, cfg.batch_size)
            batch = {k: v[index] for k, v in inputs.items()}
            rng, step_rng = jax.random.split(rng)
            params, opt_state, loss, accuracy = update(params, opt_state, batch, labels[index], step_rng)
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                held_loss, probs = evaluate(params)
                metrics = binary_metrics(probs, labels[held_idx] > 0.5, 0.5)
                record = {"step": step, "train_loss": float(loss), "train_accuracy": float(accuracy),
                          "heldout_loss": held_loss, "heldout_accuracy": metrics["accuracy"],
                          "seconds": time.perf_counter() - started}
                history.append(record)
                if held_loss < best[0] - 1e-4:
                    best = (held_loss, params, probs, step)
                    evals_without_gain = 0
                else:
                    evals_without_gain += 1
                if bar is not None:
                    bar.update(step, record)
                if log is not None:
                    log(f"step {step}: train loss {float(loss):.4f}, held-out loss {held_loss:.4f}, "
                        f"held-out accuracy {metrics['accuracy']:.3f}")
                if step >= cfg.min_steps and evals_without_gain >= cfg.patience:
                    break
    finally:
        if bar is not None:
            bar.close()
    _, params, probs, best_step = best
    if probs is None:
        _, probs = evaluate(params)
    held_labels = labels[held_idx] > 0.5
    threshold, reached = threshold_for_precision(probs, held_labels, cfg.target_precision)
    metadata = {
        "best_step": best_step,
        "steps_run": history[-1]["step"] if history else 0,
        "train_config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
        "data": frames.summary(),
        "train_episodes": sorted({frames.sources[i] for i in np.unique(frames.episode[train_idx])}),
        "heldout_episodes": sorted({frames.sources[i] for i in np.unique(frames.episode[held_idx])}),
        "target_precision": cfg.target_precision,
        "target_precision_reached": reached,
        "heldout_metrics": binary_metrics(probs, held_labels, threshold),
    }
    checkpoint = ClassifierCheckpoint(spec, jax.device_get(params), threshold, metadata)
    return ClassifierTrainingResult(checkpoint, history, train_idx, held_idx, probs)


class _TrainingProgressBar:
    """A rich progress bar with the latest losses (console only)."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.fields[status]}"))
        self._task = self._progress.add_task("train", total=total, status="")
        self._progress.start()

    def update(self, step: int, record: dict) -> None:
        status = (f"loss {record['train_loss']:.3f} | held-out loss {record['heldout_loss']:.3f} "
                  f"acc {record['heldout_accuracy']:.3f}")
        self._progress.update(self._task, completed=step, status=status)

    def close(self) -> None:
        self._progress.stop()
