"""Every real-arm example config loads and is consistent; the sim-able ones run against the twin."""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.common import SENSOR_SIZE  # noqa: E402
from serl.envs.reset_hooks import build_hook  # noqa: E402
from serl.envs.task_config import TaskConfig  # noqa: E402

EXAMPLES = ["peg_insertion", "pcb_insertion", "cable_routing", "object_relocation", "ram_insertion", "usb_insertion"]


def real_configs() -> list[tuple[str, TaskConfig]]:
    out = []
    for name in EXAMPLES:
        module = importlib.import_module(f"examples.{name}.config")
        if name == "object_relocation":
            out += [(f"{name}:forward", module.config("forward")), (f"{name}:backward", module.config("backward"))]
        else:
            out.append((name, module.config()))
    return out


@pytest.mark.parametrize("label, task", real_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_real_config_is_consistent(label, task):
    assert isinstance(task, TaskConfig) and task.robot == "fr3"
    assert (ROOT / "examples" / label.split(":")[0] / "README.md").is_file()
    assert task.safety_box.contains(np.asarray(task.reset_pose)), f"{label}: reset pose outside its safety box"
    low, high = np.asarray(task.safety_box.position_low), np.asarray(task.safety_box.position_high)
    assert np.all(high - low > 0.005) and np.all(high - low < 0.6), "box must be tight enough to mean something"
    for dx in (-task.reset_xy_range, task.reset_xy_range):
        jittered = np.asarray(task.reset_pose, float)
        jittered[0] += dx
        assert task.safety_box.contains(jittered), f"{label}: randomised reset leaves the box"
    assert task.reward == "classifier"
    assert all(s > 0 for s in task.action_scale[:2])
    assert (task.gripper_mode == "none") == (task.action_scale[2] == 0.0)
    task.compliance.validate()
    task.precision.validate()
    assert np.all(np.asarray(task.compliance.translational_clip) <= 0.02), "contact-rich tasks clip the error tightly"
    assert task.cameras, "real tasks learn from pixels"
    for camera in task.cameras:
        if camera.crop is not None:
            top, left, h, w = camera.crop
            assert top + h <= SENSOR_SIZE[0] and left + w <= SENSOR_SIZE[1], f"{label}: crop of {camera.name} off-sensor"
    for hook in task.reset_hooks:
        build_hook(hook)


def test_forward_and_backward_reset_each_other():
    from examples.object_relocation.config import BACKWARD, BIN_A, BIN_B, FORWARD, config

    assert FORWARD.reset_pose == BIN_A and BACKWARD.reset_pose == BIN_B
    assert FORWARD.name != BACKWARD.name and FORWARD.safety_box == BACKWARD.safety_box
    with pytest.raises(ValueError, match="direction"):
        config("sideways")


def test_bad_override_is_rejected():
    from examples.peg_insertion.config import config

    with pytest.raises(ValueError, match="reset_pose"):
        dataclasses.replace(config(), reset_pose=(0.5, 0.0, 0.1))


@pytest.mark.parametrize("module_name", ["examples.peg_insertion.config", "examples.object_relocation.config"])
def test_sim_variant_runs_on_the_twin(module_name):
    pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads
    from serl.envs.tasks import make_sim_env, register_task

    task = importlib.import_module(module_name).sim_config()
    register_task(task, overwrite=True)
    env = make_sim_env(task.name, robot=task.robot, seed=0)
    try:
        obs, info = env.reset(seed=0)
        assert set(obs["images"]) == {"wrist", "front"}
        assert task.safety_box.contains(env.client.state().tcp_pose, tolerance=0.01)
        rewards = []
        for _ in range(5):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            rewards.append(reward)
            assert obs["images"]["wrist"].shape == (128, 128, 3)
        assert np.all(np.isfinite(rewards))
        assert env.client.state().errors == []
        assert task.safety_box.contains(env.client.state().tcp_pose, tolerance=0.02)
    finally:
        env.close()
