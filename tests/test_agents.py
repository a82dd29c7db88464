"""SAC losses against hand-computed values, ensemble min-subset, grasp-critic targets, config and update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serl.agents import SACAgent, SACConfig, losses
from serl.agents.augment import random_shift
from serl.networks.gaussian_policy import gaussian_log_prob, sample_tanh_gaussian, tanh_log_det_jacobian


def test_td_target_and_critic_loss_by_hand():
    rewards = jnp.array([1.0, 0.5])
    masks = jnp.array([1.0, 0.0])
    next_q = jnp.array([2.0, 10.0])
    target = losses.td_target(rewards, masks, 0.9, next_q)
    np.testing.assert_allclose(target, [1.0 + 0.9 * 2.0, 0.5])
    with_entropy = losses.td_target(rewards, masks, 0.9, next_q, jnp.array([-1.0, -1.0]), 0.5, backup_entropy=True)
    np.testing.assert_allclose(with_entropy, [1.0 + 0.9 * (2.0 + 0.5), 0.5])
    qs = jnp.array([[2.0, 0.0], [3.0, 1.0]])  # (N=2, B=2), target (2.8, 0.5)
    expected = ((2.0 - 2.8) ** 2 + (0.0 - 0.5) ** 2 + (3.0 - 2.8) ** 2 + (1.0 - 0.5) ** 2) / 4
    np.testing.assert_allclose(losses.critic_loss(qs, target), expected, rtol=1e-6)


def test_actor_and_temperature_loss_by_hand():
    qs = jnp.array([[1.0, 3.0], [3.0, 5.0]])  # ensemble mean = (2, 4)
    log_prob = jnp.array([-1.0, 1.0])
    np.testing.assert_allclose(losses.actor_loss(qs, log_prob, 0.5), ((0.5 * -1 - 2) + (0.5 * 1 - 4)) / 2)
    # entropy 1.0 above a target of -2 -> loss = alpha * 3, gradient w.r.t. alpha positive (alpha shrinks)
    np.testing.assert_allclose(losses.temperature_loss(0.2, 1.0, -2.0), 0.6, rtol=1e-6)
    assert jax.grad(lambda a: losses.temperature_loss(a, 1.0, -2.0))(0.2) > 0


def test_grasp_double_dqn_target_by_hand():
    rewards = jnp.array([1.0, 0.0])
    masks = jnp.array([1.0, 1.0])
    online = jnp.array([[0.0, 5.0, 1.0], [9.0, 0.0, 0.0]])  # argmax: stay (1), close (0)
    target_q = jnp.array([[7.0, 2.0, 100.0], [3.0, 50.0, 50.0]])
    target = losses.grasp_td_target(rewards, masks, 0.5, online, target_q)
    np.testing.assert_allclose(target, [1.0 + 0.5 * 2.0, 0.5 * 3.0])  # target net's value at the online argmax
    q = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    idx = losses.gripper_action_to_index(jnp.array([1.0, -0.9]))  # open -> 2, close -> 0
    np.testing.assert_array_equal(idx, [2, 0])
    np.testing.assert_allclose(losses.grasp_critic_loss(q, idx, target), ((3 - 2) ** 2 + (4 - 1.5) ** 2) / 2)
    np.testing.assert_array_equal(losses.gripper_index_to_action(jnp.array([0, 1, 2])), [-1.0, 0.0, 1.0])


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean, log_std = jnp.array([[0.3, -0.2]]), jnp.array([[-0.5, 0.1]])
    action, log_prob = sample_tanh_gaussian(jax.random.PRNGKey(0), mean, log_std)
    pre = jnp.arctanh(action)
    naive = gaussian_log_prob(pre, mean, log_std) - jnp.sum(jnp.log(1 - action**2), -1)
    np.testing.assert_allclose(log_prob, naive, rtol=1e-4)
    assert np.isfinite(tanh_log_det_jacobian(jnp.array([[50.0, -50.0]]))).all()


def test_random_shift_is_per_sample_edge_padded_crop():
    images = jnp.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(jnp.uint8)
    out = random_shift(jax.random.PRNGKey(3), images, pad=2)
    assert out.shape == images.shape and out.dtype == jnp.uint8
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    offsets = []
    for b in range(2):
        found = [(i, j) for i in range(5) for j in range(5) if np.array_equal(padded[b, i:i + 6, j:j + 6], out[b])]
        assert found, "each output must be a crop of the edge-padded input"
        offsets.append(found[0])
    many = random_shift(jax.random.PRNGKey(4), jnp.broadcast_to(images[:1], (16, 6, 6, 1)), pad=2)
    assert len({np.asarray(m).tobytes() for m in many}) > 1  # shifts differ across the batch


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown keys.*bogus"):
        SACConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="num_min_qs"):
        SACConfig(num_qs=2, num_min_qs=3)
    with pytest.raises(ValueError, match="bc_weight"):
        SACConfig(bc_weight=float("nan"))
    with pytest.raises(ValueError, match="grasp_margin"):
        SACConfig(grasp_margin=-0.1)
    cfg = SACConfig.rlpd_with_demo_bc()
    assert (cfg.num_qs, cfg.num_min_qs, cfg.critic_layer_norm, cfg.utd_ratio, cfg.bc_weight) == (10, 2, True, 4, 1.0)
    assert SACConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_qs = 3


def _batch(rng, n, state_dim=3, action_dim=2):
    return {
        "observations": {"state": rng.normal(size=(n, state_dim)).astype(np.float32)},
        "next_observations": {"state": rng.normal(size=(n, state_dim)).astype(np.float32)},
        "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "masks": np.ones(n, np.float32),
        "dones": np.zeros(n, np.float32),
    }


def test_bc_loss_by_hand_counts_demo_rows_only():
    policy = jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5, -0.5]])
    stored = jnp.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(losses.bc_loss(policy, stored, jnp.array([1.0, 1.0, 0.0])), (1.0 + 0.5) / 2)
    assert float(losses.bc_loss(policy, stored, jnp.zeros(3))) == 0.0


def test_bc_nll_loss_by_hand():
    mean, log_std = jnp.array([[0.0, 0.5]]), jnp.array([[0.0, np.log(0.5)]])
    stored = jnp.array([[np.tanh(1.0), 1.0]])  # the saturated entry is read as atanh(0.97)
    z = np.array([1.0, (np.arctanh(0.97) - 0.5) / 0.5])
    expected = np.mean(0.5 * z**2 + np.array([0.0, np.log(0.5)]) + 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(losses.bc_nll_loss(mean, log_std, stored, jnp.ones(1)), expected, rtol=1e-5)
    assert float(losses.bc_nll_loss(mean, log_std, stored, jnp.zeros(1))) == 0.0


def test_grasp_margin_loss_by_hand():
    q = jnp.array([[1.0, 0.95, 0.5], [0.2, 0.0, 0.9]])
    taken = jnp.array([1, 2])  # row 0: the demo stayed, 0.05 below "close"; row 1: opening already wins by 0.7
    # row 0: max(1.0 + 0.1, 0.95, 0.5 + 0.1) - 0.95 = 0.15; row 1: max(0.3, 0.1, 0.9) - 0.9 = 0
    np.testing.assert_allclose(losses.grasp_margin_loss(q, taken, jnp.array([1.0, 1.0]), 0.1), 0.075, rtol=1e-6)
    np.testing.assert_allclose(losses.grasp_margin_loss(q, taken, jnp.array([0.0, 1.0]), 0.1), 0.0, atol=1e-7)


def _one_action_demo_batch() -> dict:
    """A batch of demo rows that all took the action (0.6, -0.4)."""
    batch = _batch(np.random.default_rng(0), 4 * 32)
    batch["actions"] = np.tile(np.array([[0.6, -0.4]], np.float32), (4 * 32, 1))
    batch["demo"] = np.ones(4 * 32, np.float32)
    return batch


def _trained_on(batch: dict, updates: int, **config):
    agent = SACAgent.create(0, {"state": np.zeros(3, np.float32)}, 2,
                            SACConfig(hidden_dims=(16, 16), utd_ratio=4, actor_lr=3e-3, **config))
    for _ in range(updates):
        agent, metrics = agent.update(batch)
    return agent, metrics


def test_bc_weight_pulls_the_policy_onto_demo_actions():
    batch = _one_action_demo_batch()

    def distance_after_updates(bc_weight):
        agent, metrics = _trained_on(batch, 100, bc_weight=bc_weight)
        assert np.isfinite(float(metrics["bc_loss"]))
        return float(np.abs(np.asarray(agent.eval_actions(batch["observations"])) - batch["actions"]).mean())

    with_bc, without_bc = distance_after_updates(10.0), distance_after_updates(0.0)
    assert with_bc < 0.12 and without_bc > 3 * with_bc


def test_bc_likelihood_narrows_the_policy_on_demo_actions():
    batch = _one_action_demo_batch()

    def spread_and_distance(likelihood):
        agent, _ = _trained_on(batch, 150, bc_weight=10.0, bc_likelihood=likelihood)
        actions = np.asarray(agent.sample_actions(batch["observations"], jax.random.PRNGKey(1)))
        return float(actions.std(axis=0).mean()), float(np.abs(actions.mean(axis=0) - batch["actions"][0]).mean())

    (nll_spread, nll_distance), (mse_spread, _) = spread_and_distance(True), spread_and_distance(False)
    assert nll_distance < 0.1 and nll_spread < 0.5 * mse_spread, (nll_spread, nll_distance, mse_spread)


def test_policy_std_max_caps_the_spread_of_sampled_actions():
    obs = {"state": np.zeros((4096, 3), np.float32)}

    def pre_tanh_spread(cap):
        agent = SACAgent.create(0, {"state": np.zeros(3, np.float32)}, 2, SACConfig(hidden_dims=(16, 16),
                                                                                   policy_std_max=cap))
        actions = np.asarray(agent.sample_actions(obs, jax.random.PRNGKey(1)))
        return np.arctanh(np.clip(actions, -0.999999, 0.999999)).std(axis=0)

    capped, free = pre_tanh_spread(0.1), pre_tanh_spread(float(np.exp(2.0)))
    assert np.all(capped < 0.105) and np.all(free > 0.5), (capped, free)
    with pytest.raises(ValueError, match="policy_std_max"):
        SACConfig(policy_std_max=0.0)


def test_explore_std_max_narrows_the_sampled_actions_but_not_the_policy():
    obs = {"state": np.zeros((4096, 3), np.float32)}
    wide = SACAgent.create(0, {"state": np.zeros(3, np.float32)}, 2, SACConfig(hidden_dims=(16, 16)))
    narrow = wide.replace(config=dataclasses.replace(wide.config, explore_std_max=0.1))
    pre_tanh = [np.arctanh(np.clip(np.asarray(a.sample_actions(obs, jax.random.PRNGKey(1))), -0.999999, 0.999999))
                for a in (wide, narrow)]
    assert np.all(pre_tanh[1].std(axis=0) < 0.105) and np.all(pre_tanh[0].std(axis=0) > 0.5)
    policy_mean = np.arctanh(np.asarray(narrow.eval_actions({"state": obs["state"][0]})))
    np.testing.assert_allclose(pre_tanh[1].mean(axis=0), policy_mean, atol=0.01)  # 6 standard errors
    features = narrow.encode(narrow.critic.params["encoder"], {"state": obs["state"][:1]})
    _, log_std = narrow.policy(narrow.actor.params, features)
    assert np.all(np.exp(np.asarray(log_std)) > 0.5)
    with pytest.raises(ValueError, match="explore_std_max"):
        SACConfig(explore_std_max=float("nan"))


def test_update_runs_utd_critic_steps_and_one_actor_step():
    obs = {"state": np.zeros(3, np.float32)}
    cfg = SACConfig(hidden_dims=(16, 16), num_qs=4, num_min_qs=2, critic_layer_norm=True, utd_ratio=3)
    agent = SACAgent.create(0, obs, 2, cfg)
    new, metrics = agent.update(_batch(np.random.default_rng(0), 3 * 8))
    assert int(new.critic.step) == 3 and int(new.actor.step) == 1 and int(new.temp.step) == 1 and int(new.step) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert agent.target_entropy == -1.0
    ensemble = new.critic.params["critic"]
    leaves = jax.tree_util.tree_leaves(ensemble)
    assert all(leaf.shape[0] == 4 for leaf in leaves)  # params split over members
    assert not np.allclose(leaves[0][0], leaves[0][1])
    # target moved by Polyak from the initial params, only a little
    before = jax.tree_util.tree_leaves(agent.target_critic_params)
    after = jax.tree_util.tree_leaves(new.target_critic_params)
    online = jax.tree_util.tree_leaves(new.critic.params)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(after, before)]
    assert max(moved) > 0
    assert max(float(jnp.abs(o - b).max()) for o, b in zip(online, before)) > max(moved)
    with pytest.raises(ValueError, match="multiple of utd_ratio"):
        agent.update(_batch(np.random.default_rng(0), 10))


def test_actor_update_period_skips_actor():
    obs = {"state": np.zeros(3, np.float32)}
    agent = SACAgent.create(0, obs, 2, SACConfig(hidden_dims=(8,), utd_ratio=2, actor_update_period=2))
    rng = np.random.default_rng(1)
    agent, m0 = agent.update(_batch(rng, 8))
    agent, m1 = agent.update(_batch(rng, 8))
    assert int(agent.critic.step) == 4 and int(agent.actor.step) == 1
    assert np.isfinite(float(m0["actor_loss"])) and np.isnan(float(m1["actor_loss"]))


def test_actions_in_bounds_single_and_batched_with_grasp_critic():
    obs = {"state": np.zeros(3, np.float32)}
    agent = SACAgent.create(0, obs, 7, SACConfig(hidden_dims=(8,), grasp_critic=True))
    assert agent.continuous_dim == 6 and agent.target_entropy == -3.0
    single = np.asarray(agent.sample_actions(obs, jax.random.PRNGKey(0)))
    assert single.shape == (7,) and np.all(np.abs(single[:6]) <= 1) and single[6] in (-1.0, 0.0, 1.0)
    batched = np.asarray(agent.eval_actions({"state": np.zeros((5, 3), np.float32)}))
    assert batched.shape == (5, 7)
    np.testing.assert_array_equal(np.asarray(agent.eval_actions(obs)), batched[0])


def test_grasp_critic_learns_the_rewarded_gripper_action():
    obs = {"state": np.zeros(3, np.float32)}
    agent = SACAgent.create(0, obs, 3, SACConfig(hidden_dims=(16,), grasp_critic=True, discount=0.0, utd_ratio=4, grasp_lr=3e-3))
    rng = np.random.default_rng(0)
    n = 4 * 32
    batch = _batch(rng, n, action_dim=3)
    batch["actions"][:, 2] = rng.choice([-1.0, 0.0, 1.0], n)
    batch["rewards"] = (batch["actions"][:, 2] == 1.0).astype(np.float32)  # opening pays 1
    batch["grasp_penalty"] = np.where(batch["actions"][:, 2] == 0.0, 0.0, -0.1).astype(np.float32)
    for _ in range(60):
        agent, metrics = agent.update(batch)
    q = agent.grasp_q(agent.grasp.params, agent.encode(agent.critic.params["encoder"], batch["observations"]))
    np.testing.assert_allclose(np.asarray(q).mean(0), [-0.1, 0.0, 0.9], atol=0.1)
    assert np.all(np.asarray(agent.eval_actions(batch["observations"]))[:, 2] == 1.0)


def test_two_grippers_index_nine_joint_actions_by_hand():
    # digits close/stay/open = 0/1/2, the first gripper the most significant: (close, open) -> 0*3 + 2
    grippers = jnp.array([[-1.0, 1.0], [1.0, 0.0], [0.2, -0.7], [1.0, 1.0]])
    index = losses.joint_gripper_index(grippers)
    np.testing.assert_array_equal(index, [2, 7, 3, 8])
    all_nine = losses.joint_gripper_actions(jnp.arange(9), 2)
    np.testing.assert_array_equal(all_nine[:4], [[-1, -1], [-1, 0], [-1, 1], [0, -1]])
    np.testing.assert_array_equal(losses.joint_gripper_index(all_nine), np.arange(9))
    np.testing.assert_array_equal(losses.joint_gripper_index(jnp.array([[1.0], [-1.0]])), [2, 0])  # one gripper as before
    # Double DQN over the 9 joint actions: the online net picks (open, close) = 6, the target net values it
    online = jnp.zeros((1, 9)).at[0, 6].set(5.0)
    target_q = jnp.arange(9.0)[None] * 10.0
    target = losses.grasp_td_target(jnp.array([1.0]), jnp.array([1.0]), 0.5, online, target_q)
    np.testing.assert_allclose(target, [1.0 + 0.5 * 60.0])
    q = jnp.arange(9.0)[None]
    np.testing.assert_allclose(losses.grasp_critic_loss(q, index[:1], target), (2.0 - 31.0) ** 2)
    # the demo's joint choice (2) loses to 8 by 6; with a margin of 1 the term is 8 + 1 - 2
    np.testing.assert_allclose(losses.grasp_margin_loss(q, index[:1], jnp.array([1.0]), 1.0), 7.0)


def test_dual_arm_actions_put_both_grippers_where_the_layout_says():
    obs = {"state": np.zeros(3, np.float32)}
    config = SACConfig(hidden_dims=(8,), grasp_critic=True, gripper_indices=(6, 13))
    agent = SACAgent.create(0, obs, 14, config)
    assert agent.continuous_dim == 12 and agent.target_entropy == -6.0 and agent.gripper_indices == (6, 13)
    q = agent.grasp_q(agent.grasp.params, agent.encode(agent.critic.params["encoder"], {"state": np.zeros((1, 3))}))
    assert q.shape == (1, 9)
    actions = np.asarray(agent.sample_actions({"state": np.zeros((64, 3), np.float32)}, jax.random.PRNGKey(1)))
    assert actions.shape == (64, 14)
    assert np.all(np.isin(actions[:, [6, 13]], (-1.0, 0.0, 1.0)))
    assert np.all(np.abs(actions) <= 1) and len(np.unique(actions[:, [0, 7, 12]])) > 3  # continuous entries vary
    with pytest.raises(ValueError, match="outside an action of 14"):
        SACAgent.create(0, obs, 14, SACConfig(grasp_critic=True, gripper_indices=(6, 14)))
    with pytest.raises(ValueError, match="same entry twice"):
        SACAgent.create(0, obs, 14, SACConfig(grasp_critic=True, gripper_indices=(6, -8)))


def test_grasp_critic_with_two_grippers_learns_the_rewarded_joint_action():
    obs = {"state": np.zeros(3, np.float32)}
    config = SACConfig(hidden_dims=(16,), grasp_critic=True, gripper_indices=(1, 3), discount=0.0, utd_ratio=4,
                       grasp_lr=3e-3, bc_weight=0.0)
    agent = SACAgent.create(0, obs, 4, config)
    rng = np.random.default_rng(0)
    n = 4 * 64
    batch = _batch(rng, n, action_dim=4)
    batch["actions"][:, 1] = rng.choice([-1.0, 0.0, 1.0], n)
    batch["actions"][:, 3] = rng.choice([-1.0, 0.0, 1.0], n)
    # the handover's moment: the first hand opens while the second closes
    batch["rewards"] = ((batch["actions"][:, 1] == 1.0) & (batch["actions"][:, 3] == -1.0)).astype(np.float32)
    for _ in range(80):
        agent, _ = agent.update(batch)
    q = np.asarray(agent.grasp_q(agent.grasp.params, agent.encode(agent.critic.params["encoder"], batch["observations"])))
    expected = np.zeros(9)
    expected[2 * 3 + 0] = 1.0  # (open, close)
    np.testing.assert_allclose(q.mean(0), expected, atol=0.15)
    chosen = np.asarray(agent.eval_actions(batch["observations"]))
    assert np.all(chosen[:, 1] == 1.0) and np.all(chosen[:, 3] == -1.0)
    assert np.all(np.abs(chosen[:, [0, 2]]) < 1.0)  # the continuous entries stay the actor's


def test_target_evaluates_only_the_sampled_members_with_the_same_result():
    obs = {"state": np.zeros(3, np.float32)}
    agent = SACAgent.create(0, obs, 2, SACConfig(hidden_dims=(8,), num_qs=10, num_min_qs=2))
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    actions = jnp.asarray(rng.uniform(-1, 1, (5, 2)), jnp.float32)
    all_qs = agent.q_values(agent.target_critic_params["critic"], features, actions)
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        min_over_subset = jnp.min(all_qs[losses.subset_indices(key, 10, 2)], axis=0)  # REDQ/RLPD's target
        np.testing.assert_allclose(agent.target_min_q(key, features, actions), min_over_subset, rtol=1e-5, atol=1e-6)
