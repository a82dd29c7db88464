"""Networks: MLP/LayerNorm, critic ensemble, encoders (ResNet-10 GroupNorm, small conv), shared and per-camera
encoders, frozen backbone, pretrained weight files, and a DrQ pixel update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serl.agents import SACAgent, SACConfig
from serl.networks import (MLP, CriticEnsemble, EncodedObservation, ResNet10, SmallConv, from_serl_resnet10,
                           insert_backbone_params, load_backbone_params, save_backbone_params)


def test_mlp_layer_norm_and_ensemble_members_independent():
    x = jnp.ones((4, 3))
    params = jax.eval_shape(MLP((8, 8), use_layer_norm=True).init, jax.random.PRNGKey(0), x)["params"]
    assert "LayerNorm_0" in params and "LayerNorm_1" not in params  # no norm after the output layer
    critic = CriticEnsemble((8,), num_qs=5, use_layer_norm=True)
    qs = jax.jit(lambda: critic.apply(critic.init(jax.random.PRNGKey(0), x, jnp.ones((4, 2))), x, jnp.ones((4, 2))))()
    assert qs.shape == (5, 4)
    assert len(set(np.round(np.asarray(qs[:, 0]), 6))) == 5  # different initialisations per member
    with pytest.raises(ValueError, match="activation"):
        jax.eval_shape(MLP((4,), activation="nope").init, jax.random.PRNGKey(0), x)


def test_resnet10_spatial_output_and_groupnorm():
    images = jnp.zeros((2, 64, 64, 3), jnp.uint8)
    params = jax.eval_shape(ResNet10(num_filters=8).init, jax.random.PRNGKey(0), images)["params"]
    out = jax.eval_shape(ResNet10(num_filters=8).apply, {"params": params}, images)
    assert out.shape == (2, 2, 2, 64)  # /32 spatially, 8 * num_filters channels
    assert "norm_init" in params and "GroupNorm" not in str(params.keys())  # named norms
    assert {"stage0_block0", "stage1_block0", "stage2_block0", "stage3_block0"} <= set(params)


def _obs(batch=2, size=32):
    rng = np.random.default_rng(0)
    return {"state": rng.normal(size=(batch, 5)).astype(np.float32),
            "front": rng.integers(0, 255, (batch, size, size, 3), np.uint8),
            "wrist": rng.integers(0, 255, (batch, size, size, 3), np.uint8)}


@pytest.mark.parametrize("share", [False, True])
def test_encoded_observation_per_camera_or_shared(share):
    enc = EncodedObservation(image_keys=("front", "wrist"), backbone="small", share_encoder=share, latent_dim=16)
    params = jax.jit(enc.init)(jax.random.PRNGKey(0), _obs())["params"]
    out = jax.jit(enc.apply)({"params": params}, _obs())
    assert out.shape == (2, 16 * 2 + 5)  # state concatenated after the image features
    np.testing.assert_allclose(out[:, -5:], _obs()["state"], rtol=1e-6)
    names = {k for k in params if k.startswith("encoder_")}
    assert names == ({"encoder_shared"} if share else {"encoder_front", "encoder_wrist"})


def test_frozen_backbone_gets_no_gradient_but_head_does():
    enc = EncodedObservation(image_keys=("wrist",), backbone="small", freeze_backbone=True, latent_dim=8)
    obs = _obs()
    params = jax.jit(enc.init)(jax.random.PRNGKey(0), obs)["params"]
    grads = jax.jit(jax.grad(lambda p: enc.apply({"params": p}, obs).sum()))(params)
    backbone = jax.tree_util.tree_leaves(grads["encoder_wrist"]["backbone"])
    head = jax.tree_util.tree_leaves(grads["encoder_wrist"]["head_dense"])
    assert all(float(jnp.abs(g).max()) == 0 for g in backbone)
    assert any(float(jnp.abs(g).max()) > 0 for g in head)


def _random_params(shapes, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


@pytest.mark.parametrize("suffix", [".msgpack", ".npz"])
def test_pretrained_backbone_file_loads_and_mismatch_is_clear(tmp_path, suffix):
    enc = EncodedObservation(image_keys=("front", "wrist"), backbone="resnet10", resnet_filters=4, latent_dim=8)
    params = _random_params(jax.eval_shape(enc.init, jax.random.PRNGKey(0), _obs())["params"], seed=0)
    pretrained = _random_params(jax.eval_shape(ResNet10(num_filters=4).init, jax.random.PRNGKey(42), _obs()["wrist"])["params"], seed=1)
    path = tmp_path / f"resnet10{suffix}"
    save_backbone_params(path, pretrained)
    loaded = insert_backbone_params(params, load_backbone_params(path))
    for cam in ("encoder_front", "encoder_wrist"):
        for a, b in zip(jax.tree_util.tree_leaves(loaded[cam]["backbone"]), jax.tree_util.tree_leaves(pretrained)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded["encoder_front"]["head_dense"]["kernel"], params["encoder_front"]["head_dense"]["kernel"])
    wrong = jax.eval_shape(ResNet10(num_filters=8).init, jax.random.PRNGKey(1), _obs()["wrist"])["params"]
    wrong = _random_params(wrong, seed=2)
    bad_path = tmp_path / f"wrong{suffix}"
    save_backbone_params(bad_path, wrong)
    with pytest.raises(ValueError, match="shape of"):
        insert_backbone_params(params, load_backbone_params(bad_path))
    with pytest.raises(FileNotFoundError):
        load_backbone_params(tmp_path / "missing.npz")


def test_serl_resnet10_params_are_renamed_into_ours_and_give_the_same_features():
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
    ours = jax.jit(ResNet10(num_filters=8).init)(jax.random.PRNGKey(0), images)["params"]
    # SERL's flax names for the same layers (serl_launcher/vision/resnet_v1.py, ResNetEncoder with ResNetBlock)
    names = {"conv1": "Conv_0", "norm1": "MyGroupNorm_0", "conv2": "Conv_1", "norm2": "MyGroupNorm_1",
             "proj_conv": "conv_proj", "proj_norm": "norm_proj"}
    serl = {"conv_init": ours["conv_init"], "norm_init": ours["norm_init"]}
    for i in range(4):
        serl[f"ResNetBlock_{i}"] = {names[k]: v for k, v in ours[f"stage{i}_block0"].items()}
    renamed = from_serl_resnet10(serl)
    apply = jax.jit(ResNet10(num_filters=8).apply)
    np.testing.assert_array_equal(apply({"params": renamed}, images), apply({"params": ours}, images))
    with pytest.raises(ValueError, match="unknown entry 'Dense_0'"):
        from_serl_resnet10({**serl, "Dense_0": {}})
    with pytest.raises(ValueError, match="unknown layers"):
        from_serl_resnet10({**serl, "ResNetBlock_0": {"Conv_9": {}}})


def test_drq_pixel_agent_pretrained_frozen_backbone_encoder_trained_by_critic_only(tmp_path):
    obs = {k: v[0] for k, v in _obs(size=16).items()}
    pretrained = _random_params(jax.eval_shape(SmallConv().init, jax.random.PRNGKey(7), _obs(size=16)["wrist"])["params"], 3)
    save_backbone_params(tmp_path / "small.npz", pretrained)
    cfg = SACConfig(hidden_dims=(16,), utd_ratio=2, encoder="small", encoder_latent_dim=8,
                    freeze_backbone=True, grasp_critic=True, pretrained_backbone=str(tmp_path / "small.npz"))
    with pytest.raises(ValueError, match="no camera"):
        SACAgent.create(0, {"state": obs["state"]}, 7, cfg)
    agent = SACAgent.create(0, obs, 7, cfg)
    assert agent.image_keys == ("front", "wrist")
    for params in (agent.critic.params["encoder"], agent.target_critic_params["encoder"]):
        for cam in ("encoder_front", "encoder_wrist"):
            for a, b in zip(jax.tree_util.tree_leaves(pretrained), jax.tree_util.tree_leaves(params[cam]["backbone"])):
                np.testing.assert_array_equal(a, b)
    n = 2 * 4
    rng = np.random.default_rng(1)
    batch = {"observations": _obs(batch=n, size=16), "next_observations": _obs(batch=n, size=16),
             "actions": rng.uniform(-1, 1, (n, 7)).astype(np.float32), "rewards": np.ones(n, np.float32),
             "masks": np.ones(n, np.float32), "dones": np.zeros(n, np.float32)}
    new, metrics = agent.update(batch)
    assert np.isfinite(float(metrics["critic_loss"])) and np.isfinite(float(metrics["grasp_loss"]))
    enc_before, enc_after = agent.critic.params["encoder"], new.critic.params["encoder"]
    for cam in ("encoder_front", "encoder_wrist"):
        for a, b in zip(jax.tree_util.tree_leaves(enc_before[cam]["backbone"]),
                        jax.tree_util.tree_leaves(enc_after[cam]["backbone"])):
            np.testing.assert_array_equal(a, b)  # frozen backbone unchanged
        assert not np.allclose(enc_before[cam]["head_dense"]["kernel"], enc_after[cam]["head_dense"]["kernel"])
    # the actor's parameters hold no encoder: the actor loss cannot move it
    assert "encoder" not in new.actor.params
    act = np.asarray(new.sample_actions(obs, jax.random.PRNGKey(0)))
    assert act.shape == (7,) and act[6] in (-1.0, 0.0, 1.0)
