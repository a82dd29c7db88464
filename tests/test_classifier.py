"""Reward classifiers end to end on the twin: ground-truth labelled PandaPickCube frames → training (held-out
accuracy >= 95 %) → report → ClassifierReward ending episodes on success; checkpoint and camera checks."""

import io
import json
import shutil

import numpy as np
import pytest

from reward_classifiers import CheckpointError, ClassifierReward, RewardClassifier, load_checkpoint, save_checkpoint
from reward_classifiers.checkpoint import META_FILE, PARAMS_FILE, ClassifierCheckpoint
from reward_classifiers.data import (
    frames_from_episodes,
    labels_to_ranges,
    observation_labels,
    read_labels,
    split_by_episode,
)
from reward_classifiers.evaluate import binary_metrics, roc_auc, threshold_for_precision
from reward_classifiers.model import CameraInput, ClassifierSpec, EncoderConfig, init_params
from reward_classifiers.cli import (
    ClassifierEvalCommand,
    ClassifierLabelCommand,
    ClassifierTrainCommand,
    evaluate,
    label,
    train,
)
from reward_classifiers.train import ClassifierTrainingParams
from serl.data.episodes import read_episodes
from serl.envs.rewards import PickCubeReward
from serl.envs.task_config import CameraSpec
from serl.envs.tasks import make_sim_env

SIZE = 32  # CI-sized frames; the 128x128 path is exercised by test_128_pixel_path
CAMERAS = ("wrist", "front")


def pick_env(size=SIZE, cameras=CAMERAS, seed=100):
    return make_sim_env("PandaPickCube", pixels=True, seed=seed, reward="classifier", max_episode_steps=80,
                        cameras=tuple(CameraSpec(c, (size, size)) for c in cameras))


@pytest.fixture(scope="module")
def twin_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("twin") / "pick.h5"
    summary = label(ClassifierLabelCommand(out=path, from_twin="PandaPickCube", episodes=16, image_size=(SIZE, SIZE)),
                    stdout=io.StringIO())
    assert summary["episodes"] == 16 and 0 < summary["successes"] < 16
    return path


@pytest.fixture(scope="module")
def trained(twin_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "checkpoint"
    cfg = ClassifierTrainCommand(
        data=(twin_data,), out=out, progress=False,
        train=ClassifierTrainingParams(max_steps=120, min_steps=60, eval_every=20, shift_pad=1, seed=0),
    )
    summary = train(cfg, log=None)
    return out, summary


def test_twin_labels_follow_ground_truth(twin_data):
    episodes = list(read_episodes(twin_data))
    successful = [e for e in episodes if e.success]
    assert successful and len(successful) < len(episodes)
    for episode in successful:
        first = int(np.argmax(episode.succeed))
        assert episode.succeed[first:].all()  # held up after the first success
        assert episode.observations["images"]["front"].shape == (len(episode) + 1, SIZE, SIZE, 3)
    assert not any(e.succeed.any() for e in episodes if not e.success)
    frames = frames_from_episodes(twin_data, exclude_before_success=3)
    everything = frames_from_episodes(twin_data)
    assert len(everything) - len(frames) == 3 * len(successful)
    assert frames.labels.sum() == everything.labels.sum() == sum(int(e.succeed.sum()) for e in episodes)
    train_idx, held_idx = split_by_episode(frames, 0.2)
    assert not set(frames.episode[train_idx]) & set(frames.episode[held_idx])
    assert frames.labels[held_idx].any() and frames.labels[train_idx].any()


def test_training_reaches_95_percent_heldout_accuracy_with_report(trained):
    out, summary = trained
    assert summary["heldout"]["accuracy"] >= 0.95, summary
    assert summary["heldout"]["n"] >= 40 and summary["heldout"]["positives"] >= 5
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec.camera_names == ("front", "wrist")
    assert checkpoint.spec.cameras[0].image_size == (SIZE, SIZE)
    assert checkpoint.threshold == pytest.approx(summary["threshold"])
    assert checkpoint.metadata["heldout_episodes"] and checkpoint.metadata["train_episodes"]
    # frozen backbone: still the initial weights; the spatial embedding and head did train
    initial = init_params(checkpoint.spec, seed=0)
    for cam in ("front", "wrist"):
        before, after = initial["encoder"][f"encoder_{cam}"], checkpoint.params["encoder"][f"encoder_{cam}"]
        np.testing.assert_array_equal(after["backbone"]["conv_init"]["kernel"], before["backbone"]["conv_init"]["kernel"])
        assert not np.allclose(after["spatial"]["kernel"], before["spatial"]["kernel"])
    report = out / "report"
    for name in ("pr_curve.png", "confusion.png", "mistakes.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((report / "summary.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(summary["heldout"]["accuracy"])
    assert set(saved["metrics"]) >= {"precision", "recall", "f1", "roc_auc"}


def test_eval_on_heldout_episodes_and_new_threshold(trained, twin_data, tmp_path):
    out, summary = trained
    report = evaluate(ClassifierEvalCommand(checkpoint=out, data=(twin_data,), out=tmp_path / "eval",
                                           target_precision=0.9), log=None)
    assert report["data"]["episodes"] == len(load_checkpoint(out).metadata["heldout_episodes"])
    assert report["metrics"]["accuracy"] >= 0.95
    assert report["target_precision_reached"] and report["metrics"]["precision"] >= 0.9
    assert (tmp_path / "eval" / "mistakes.png").exists()


def test_wrapper_ends_episode_on_success_and_not_before(trained):
    out, _ = trained
    from serl.devices.scripted import ExpertConfig, ScriptedExpert
    from serl.envs.intervention import InterventionWrapper

    env = pick_env()
    try:
        wrapped = ClassifierReward(env, out, k=2)
        for seed, lift, should_succeed in ((200, 0.16, True), (201, 0.04, False)):
            driven = InterventionWrapper(wrapped, ScriptedExpert(env, ExpertConfig(seed=seed, lift_height=lift)))
            obs, info = driven.reset(seed=seed)
            assert 0.0 <= info["classifier_prob"] <= 1.0
            truth = PickCubeReward()
            truth.reset(env.client.scene(), env.state)
            ground_truth_steps, ended_at = [], None
            for step in range(70):
                obs, reward, terminated, truncated, info = driven.step(np.zeros(7, np.float32))
                ground_truth_steps.append(truth(env.client.scene(), env.state)[1])
                assert 0.0 <= info["classifier_prob"] <= 1.0
                if terminated:
                    ended_at = step
                    assert reward == 1.0 and info["succeed"] and info["classifier_streak"] >= 2
                    break
                assert reward == 0.0 and not info["succeed"]
            if should_succeed:
                assert ended_at is not None, "the classifier never ended a successful episode"
                assert ground_truth_steps[ended_at], "ended before the cube was lifted"
            else:
                assert ended_at is None and not any(ground_truth_steps)
    finally:
        env.close()


def constant_checkpoint(directory, bias, size=SIZE, threshold=0.5):
    """A real classifier whose output layer ignores the image: probability sigmoid(bias) every step."""
    spec = ClassifierSpec(tuple(CameraInput(c, (size, size)) for c in sorted(CAMERAS)), EncoderConfig())
    params = init_params(spec)
    params = {**params, "Dense_1": {"kernel": np.zeros_like(params["Dense_1"]["kernel"]),
                                    "bias": np.full_like(params["Dense_1"]["bias"], bias)}}
    return save_checkpoint(directory, ClassifierCheckpoint(spec, params, threshold))


def test_wrapper_needs_k_consecutive_steps(tmp_path):
    env = pick_env()
    try:
        always = ClassifierReward(env, constant_checkpoint(tmp_path / "high", 2.0), k=3)
        always.reset(seed=0)
        results = [always.step(np.zeros(7, np.float32)) for _ in range(3)]
        assert [r[2] for r in results] == [False, False, True]
        assert [r[1] for r in results] == [0.0, 0.0, 1.0]
        assert results[-1][4]["classifier_prob"] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)
        never = ClassifierReward(env, constant_checkpoint(tmp_path / "low", -2.0), k=1)
        never.reset(seed=0)
        for _ in range(4):
            _, reward, terminated, _, info = never.step(np.zeros(7, np.float32))
            assert not terminated and reward == 0.0 and info["classifier_streak"] == 0
        with pytest.raises(ValueError, match="k"):
            ClassifierReward(env, tmp_path / "high", k=0)
    finally:
        env.close()


def test_mismatched_cameras_or_sizes_fail_at_construction(tmp_path):
    path = constant_checkpoint(tmp_path / "ck", 0.0)
    env = pick_env(size=48)
    try:
        with pytest.raises(ValueError, match=r"camera 'front' gives \(48, 48, 3\).*trained on \(32, 32, 3\)"):
            ClassifierReward(env, path)
    finally:
        env.close()
    env = pick_env(cameras=("front",))
    try:
        with pytest.raises(ValueError, match=r"camera\(s\) \['wrist'\].*not in the env"):
            ClassifierReward(env, path)
    finally:
        env.close()


def test_corrupt_or_mismatched_checkpoint_gives_clear_error(tmp_path):
    good = constant_checkpoint(tmp_path / "good", 0.0)
    load_checkpoint(good)

    def variant(name):
        target = tmp_path / name
        shutil.copytree(good, target)
        return target

    with pytest.raises(CheckpointError, match="params.msgpack is missing"):
        target = variant("missing")
        (target / PARAMS_FILE).unlink()
        load_checkpoint(target)
    with pytest.raises(CheckpointError, match="corrupt"):
        target = variant("flipped")
        blob = bytearray((target / PARAMS_FILE).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (target / PARAMS_FILE).write_bytes(bytes(blob))
        load_checkpoint(target)
    with pytest.raises(CheckpointError, match="cannot be decoded"):
        target = variant("garbage")
        (target / PARAMS_FILE).write_bytes(b"\xc1not msgpack")
        meta = json.loads((target / META_FILE).read_text())
        meta.pop("params_sha256")
        (target / META_FILE).write_text(json.dumps(meta))
        load_checkpoint(target)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        target = variant("badjson")
        (target / META_FILE).write_text("{ nope")
        load_checkpoint(target)
    with pytest.raises(CheckpointError, match="do not match the spec"):
        target = variant("otherspec")  # params of a 16-filter ResNet, spec claims 32 filters
        meta = json.loads((target / META_FILE).read_text())
        meta["spec"]["encoder"]["resnet_filters"] = 32
        (target / META_FILE).write_text(json.dumps(meta))
        load_checkpoint(target)
    env = pick_env()
    try:
        with pytest.raises(CheckpointError, match="missing"):
            ClassifierReward(env, tmp_path / "nowhere")
    finally:
        env.close()


def test_label_recording_by_ranges_and_interactively(twin_data, tmp_path):
    names = [e.attrs["name"] for e in read_episodes(twin_data)]
    out = tmp_path / "labels.json"
    ranges = (f"{names[0]}:5-7", f"{names[1]}:10-")
    summary = label(ClassifierLabelCommand(out=out, input=twin_data, from_flags=False, ranges=ranges), stdout=io.StringIO())
    labels = read_labels(out)["episodes"]
    assert labels[names[0]] == [[5, 7]] and labels[names[1]][0][0] == 10 and labels[names[2]] == []
    assert summary["episodes_with_success"] == 2
    frames = frames_from_episodes(twin_data, labels_file=out)
    assert frames.labels.sum() == summary["positives"]
    with pytest.raises(ValueError, match="range"):
        label(ClassifierLabelCommand(out=out, input=twin_data, ranges=(f"{names[0]}:7-5",)), stdout=io.StringIO())

    # interactive: first episode 3-4, second kept from its flags, third none, then stop
    answers = io.StringIO("3-4\n\nnone\nq\n")
    label(ClassifierLabelCommand(out=out, input=twin_data, interactive=True), stdin=answers, stdout=io.StringIO())
    labels = read_labels(out)["episodes"]
    second = next(e for e in read_episodes(twin_data) if e.attrs["name"] == names[1])
    assert labels[names[0]] == [[3, 4]] and labels[names[2]] == []
    assert labels[names[1]] == labels_to_ranges(observation_labels(second))
    assert (tmp_path / "labels.json.frames" / f"{names[0]}.png").exists()


def test_128_pixel_path(tmp_path):
    """128x128 frames: twin labelling, crop + resize into the encoder, run-time prediction."""
    path = tmp_path / "pick128.h5"
    label(ClassifierLabelCommand(out=path, from_twin="PandaPickCube", episodes=1, fail_fraction=0.0),
          stdout=io.StringIO())
    frames = frames_from_episodes(path)
    assert frames.image_size("front") == (128, 128) and frames.labels.any()
    spec = ClassifierSpec((CameraInput("front", (128, 128), crop=(16, 0, 96, 128), input_size=(64, 64)),
                           CameraInput("wrist", (128, 128))))
    save_checkpoint(tmp_path / "ck", ClassifierCheckpoint(spec, init_params(spec), 0.5))
    classifier = RewardClassifier.load(tmp_path / "ck")
    assert spec.preprocess({c: frames.images[c][:2] for c in CAMERAS})["front"].shape == (2, 64, 64, 3)
    probs = [classifier.probability({c: frames.images[c][i] for c in CAMERAS}) for i in (0, -1)]
    assert all(0.0 <= p <= 1.0 for p in probs)
    with pytest.raises(ValueError, match="expected uint8 frames of shape"):
        classifier.probability({"front": frames.images["front"][0][:64], "wrist": frames.images["wrist"][0]})


def test_metrics_and_threshold_choice():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    probs = np.clip(labels * 0.5 + rng.random(300) * 0.6, 0, 1)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in probs[labels] for n in probs[~labels]])
    assert roc_auc(probs, labels) == pytest.approx(brute)
    threshold, reached = threshold_for_precision(probs, labels, 0.99)
    metrics = binary_metrics(probs, labels, threshold)
    assert reached and metrics["precision"] >= 0.99
    lower = probs[probs < threshold].max()
    assert binary_metrics(probs, labels, lower)["precision"] < 0.99  # the lowest threshold that reaches it
    assert binary_metrics(probs, labels, 0.0)["recall"] == 1.0
    _, reached = threshold_for_precision(np.full(10, 0.5), np.arange(10) < 5, 0.99)
    assert not reached


def test_serl_classifier_command(tmp_path, capsys):
    from serl.cli.main import main

    assert main(["classifier", "--help"]) == 0
    assert "label" in capsys.readouterr().out
    assert main(["classifier", "train", "--data", str(tmp_path / "none.h5"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["classifier", "label", "--out", str(tmp_path / "l.json")]) == 2
    assert "--from-twin" in capsys.readouterr().err


def test_actor_env_takes_reward_from_classifier(tmp_path):
    """``serl actor --env.reward-classifier CKPT`` path: build_env wraps the flat pixel env with ClassifierReward."""
    from serl.runtime.config import EnvConfig
    from serl.runtime.envs import build_env

    path = constant_checkpoint(tmp_path / "ck", 3.0, size=128, threshold=0.9)
    env = build_env(EnvConfig(task="PandaPickCube", pixels=True, reward_classifier=path, classifier_k=2), seed=0)
    try:
        assert isinstance(env, ClassifierReward) and "front" in env.observation_space.spaces  # flat layout
        env.reset(seed=0)
        first = env.step(np.zeros(env.action_space.shape, np.float32))
        second = env.step(np.zeros(env.action_space.shape, np.float32))
        assert not first[2] and first[1] == 0.0 and first[4]["classifier_prob"] > 0.9
        assert second[2] and second[1] == 1.0 and second[4]["succeed"] and not second[4]["env_succeed"]
    finally:
        env.close()
    with pytest.raises(CheckpointError):
        build_env(EnvConfig(task="PandaPickCube", pixels=True, reward_classifier=tmp_path / "nothing"), seed=0)


class ScriptedKeys:
    """Key presses at given steps (stands in for the terminal, the only part a test cannot drive)."""

    def __init__(self, presses):
        self.presses, self.step = presses, -1

    def drain(self):
        self.step += 1
        return [type("KeyEvent", (), {"key": key})() for key in self.presses.get(self.step, ())]

    def close(self):
        pass


def test_live_labelling_marks_frames_with_a_toggle_key(tmp_path):
    from reward_classifiers.live import record_labelled_episodes
    from serl.devices.scripted import ScriptedExpert
    from serl.envs.intervention import InterventionWrapper

    env = pick_env()
    try:
        driven = InterventionWrapper(env, ScriptedExpert(env))
        # drain() runs once at reset (index 0), then once per step: the n-th step sees index n
        keys = ScriptedKeys({6: ["space"], 9: ["space"], 13: ["enter"]})
        summary = record_labelled_episodes(driven, keys, tmp_path / "live.h5", 1, task="PandaPickCube")
    finally:
        env.close()
    episode = next(read_episodes(tmp_path / "live.h5"))
    assert len(episode) == 13 and episode.truncated[-1]
    assert np.flatnonzero(episode.succeed).tolist() == [5, 6, 7] and summary["positives"] == 3
    frames = frames_from_episodes(tmp_path / "live.h5")
    assert np.flatnonzero(frames.labels).tolist() == [6, 7, 8]

    summary = label(ClassifierLabelCommand(out=tmp_path / "cli.h5", live="PandaPickCube", teleop="scripted", episodes=1,
                                           image_size=(SIZE, SIZE)), stdout=io.StringIO())
    assert summary["episodes"] == 1 and summary["positives"] == 0  # nobody pressed the mark key


def test_a_classifier_over_both_arms_cameras_rewards_the_handover(tmp_path):
    """Two arms: ground-truth labelled handover frames of both wrists and the scene camera → a classifier that
    tells held-out frames apart → ``ClassifierReward`` on the two-arm env ends the expert's handover once the bar
    is handed over and carried near the goal (the ground truth's 4 cm are finer than 32-pixel frames show)."""
    from serl.devices.scripted import ExpertConfig, HandoverExpert
    from serl.envs.bimanual import bimanual_reward, get_bimanual_task
    from serl.envs.dual_franka_env import robot_env_under
    from serl.envs.intervention import InterventionWrapper
    from serl.runtime.config import EnvConfig
    from serl.runtime.envs import build_env

    data = tmp_path / "handover.h5"
    summary = label(ClassifierLabelCommand(out=data, from_twin="PandaHandover", episodes=8, image_size=(SIZE, SIZE),
                                           fail_fraction=0.4, seed=1), stdout=io.StringIO())
    assert summary["episodes"] == 8 and 0 < summary["successes"] < 8, summary
    frames = frames_from_episodes(data)
    assert frames.cameras == ("left/front", "left/wrist", "right/wrist")
    out = tmp_path / "checkpoint"
    trained = train(ClassifierTrainCommand(data=(data,), out=out, progress=False,
                                           train=ClassifierTrainingParams(max_steps=150, min_steps=60, eval_every=20,
                                                                          shift_pad=1, seed=0)), log=None)
    assert trained["heldout"]["roc_auc"] >= 0.9 and trained["heldout"]["positives"] > 0, trained
    assert load_checkpoint(out).spec.camera_names == frames.cameras

    env = build_env(EnvConfig(task="PandaHandover", pixels=True, reward_classifier=out, classifier_k=2,
                              overrides=("camera_size=32", "reward=classifier")), seed=5)
    try:
        driven = InterventionWrapper(env, HandoverExpert(env, ExpertConfig(seed=5)))
        pair = robot_env_under(env)
        judge = bimanual_reward(get_bimanual_task("PandaHandover"))
        driven.reset(seed=5)
        for step in range(110):
            _, reward, terminated, _, info = driven.step(np.zeros(env.action_space.shape, np.float32))
            if terminated:
                break
            assert reward == 0.0
        assert terminated, "the classifier never ended the handover"
        assert reward == 1.0 and info["succeed"] and not info["env_succeed"]
        bar, hands = judge.measure(pair)  # ended once the right hand had carried the bar close to the goal alone
        assert np.linalg.norm(bar - judge.goal) < 0.1 and np.linalg.norm(hands["left"] - bar) >= judge.released
    finally:
        env.close()
