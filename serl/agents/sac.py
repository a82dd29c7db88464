"""SAC with RLPD options (critic ensemble, min over a random subset, LayerNorm, high UTD in one jit),
DrQ random shift for image observations, and HIL-SERL's discrete grasp critic.

Batches are dicts: observations / next_observations (flat dicts {"state": (B, d), "<cam>": (B, H, W, 3) uint8}),
actions (B, A), rewards (B,), masks (B,) = 1 - terminated, optional grasp_penalty (B,).
`update` takes utd_ratio * batch_size rows and runs utd_ratio critic steps over minibatch slices
(lax.scan) followed by one actor and temperature step on the last slice.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from serl.agents import losses
from serl.agents.augment import augment_observations, shift
from serl.networks.gaussian_policy import TanhGaussianActor, sample_tanh_gaussian
from serl.networks.encoders import EncodedObservation, make_backbone
from serl.networks.mlp import CriticEnsemble, DiscreteCritic
from serl.networks.pretrained import insert_backbone_params, load_backbone_params


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Agent hyper-parameters. Defaults are plain SAC (2 critics, min over both, no LayerNorm, UTD 1);
    `SACConfig.rlpd_with_demo_bc()` is what `serl train` uses."""

    hidden_dims: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    num_qs: int = 2
    num_min_qs: Optional[int] = None  # None: min over all num_qs members
    critic_layer_norm: bool = False
    actor_layer_norm: bool = False
    discount: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temp_lr: float = 3e-4
    init_temperature: float = 1.0
    target_entropy: Optional[float] = None  # None: -|A|/2 over the continuous action dims
    policy_std_max: float = float(np.exp(2.0))
    """Largest standard deviation of the pre-tanh Gaussian. Once the temperature has fallen only the critic's
    curvature narrows the policy, slowly; a task whose training episodes need centimetre precision caps it."""
    explore_std_max: Optional[float] = None
    """Largest standard deviation the actor samples its actions with (None: the policy's own). The learner trains
    the policy as before (its spread up to policy_std_max); only the rollouts stay nearer the policy's mean."""
    backup_entropy: bool = False
    utd_ratio: int = 1  # critic steps per update() call
    actor_update_period: int = 1  # actor + temperature step on every k-th update() call
    # image observations
    encoder: str = "resnet10"  # "resnet10" or "small"; used only when observations hold images
    share_encoder: bool = False
    freeze_backbone: bool = False
    pretrained_backbone: Optional[str] = None  # local .msgpack or .npz with ResNet10 params
    encoder_latent_dim: int = 256
    resnet_filters: int = 64
    proprio_latent_dim: Optional[int] = None  # None: raw state appended to image features
    augment: bool = True  # DrQ random shift
    augment_pad: int = 4
    feature_cache: bool = True
    """With a frozen backbone, the learner computes its output once per stored frame, for `feature_views` fixed
    shifted views (DrQ's augmentation, drawn when the frame arrives), and trains the rest on those features."""
    feature_views: int = 4
    feature_dtype: str = "float16"
    """How cached features are stored: float16 halves the memory, float32 keeps the backbone's output exactly."""
    # HIL-SERL grasp critic: the gripper entries of the action, each in {-1, 0, +1}, are chosen by a discrete critic
    grasp_critic: bool = False
    gripper_indices: tuple[int, ...] = (-1,)
    """Where the grippers sit in the action when grasp_critic is on (negative: from the end). One arm: the last
    entry; two arms, 2 x (translation, rotation, gripper): (6, 13). k grippers: 3^k joint actions."""
    grasp_lr: float = 3e-4
    bc_weight: float = 0.0
    """Behaviour cloning on the batch's demo rows (batch["demo"] = 1): weight of the squared action error in the
    actor loss and of a large-margin term in the grasp critic's; 0 = RLPD as published."""
    bc_likelihood: bool = False
    """Behaviour cloning as the demo actions' log-likelihood (trains the policy's spread as well as its mean)
    rather than the squared error of its mean; with bc_weight > 0."""
    grasp_margin: float = 0.1
    """How far the demo's gripper choice should beat the others in the grasp critic (used when bc_weight > 0)."""

    def __post_init__(self):
        if self.num_qs < 1:
            raise ValueError("SACConfig.num_qs must be >= 1")
        if self.num_min_qs is not None and not 1 <= self.num_min_qs <= self.num_qs:
            raise ValueError(f"SACConfig.num_min_qs must be in [1, num_qs={self.num_qs}], got {self.num_min_qs}")
        if self.utd_ratio < 1 or self.actor_update_period < 1:
            raise ValueError("SACConfig.utd_ratio and actor_update_period must be >= 1")
        for name, value in (("bc_weight", self.bc_weight), ("grasp_margin", self.grasp_margin)):
            if not (np.isfinite(value) and value >= 0.0):
                raise ValueError(f"SACConfig.{name} must be finite and >= 0, got {value}")
        if not (np.isfinite(self.policy_std_max) and self.policy_std_max > 0.0):
            raise ValueError(f"SACConfig.policy_std_max must be finite and > 0, got {self.policy_std_max}")
        if self.explore_std_max is not None and not (np.isfinite(self.explore_std_max) and self.explore_std_max > 0.0):
            raise ValueError(f"SACConfig.explore_std_max must be None or finite and > 0, got {self.explore_std_max}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError("SACConfig.tau must be in (0, 1]")
        if not self.gripper_indices or len(set(self.gripper_indices)) != len(self.gripper_indices):
            raise ValueError(f"SACConfig.gripper_indices: expected distinct action indices, got {self.gripper_indices}")
        if self.encoder not in ("resnet10", "small"):
            raise ValueError(f"SACConfig.encoder: expected 'resnet10' or 'small', got {self.encoder!r}")
        if not (isinstance(self.feature_views, int) and self.feature_views >= 1):
            raise ValueError(f"SACConfig.feature_views: expected an integer >= 1, got {self.feature_views!r}")
        if self.feature_dtype not in ("float16", "float32"):
            raise ValueError(f"SACConfig.feature_dtype: expected 'float16' or 'float32', got {self.feature_dtype!r}")
        if self.augment_pad < 0:
            raise ValueError(f"SACConfig.augment_pad: expected >= 0, got {self.augment_pad}")

    @classmethod
    def from_dict(cls, values: dict) -> "SACConfig":
        """Build from a dict; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"SACConfig: unknown keys {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def rlpd_with_demo_bc(cls, **overrides) -> "SACConfig":
        """``serl train``'s agent: RLPD's critics (ensemble 10, min over 2, LayerNorm) at UTD 4, which a 2-core
        CPU keeps up with, plus behaviour cloning on the demo rows; with 20 demos that turns ~0 % success on
        the sim tasks into most of it within 3k steps."""
        base = dict(num_qs=10, num_min_qs=2, critic_layer_norm=True, utd_ratio=4, init_temperature=0.01,
                    discount=0.97, bc_weight=1.0)
        base.update(overrides)
        return cls.from_dict(base)


class Temperature(nn.Module):
    init_value: float = 1.0

    @nn.compact
    def __call__(self) -> jnp.ndarray:
        log_temp = self.param("log_temp", lambda _: jnp.full((), np.log(self.init_value), jnp.float32))
        return jnp.exp(log_temp)


def image_keys_of(observation_example: dict) -> tuple[str, ...]:
    """Camera entries of a flat observation dict: (H, W, C) uint8 arrays, in sorted order."""
    return tuple(
        sorted(k for k, v in observation_example.items() if np.ndim(v) == 3 and np.asarray(v).dtype == np.uint8)
    )


def _add_batch_axis(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], tree)


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optimiser object per learning rate, so agents with equal configs share jit caches."""
    return optax.adam(learning_rate)


def _polyak(params, target_params, tau):
    return optax.incremental_update(params, target_params, tau)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _action_indices(indices, action_dim: int) -> tuple[int, ...]:
    """``indices`` (negative from the end) as sorted non-negative positions in an action of ``action_dim``."""
    out = []
    for index in indices:
        if not -action_dim <= index < action_dim:
            raise ValueError(f"SACConfig.gripper_indices: {index} is outside an action of {action_dim} entries")
        out.append(index % action_dim)
    if len(set(out)) != len(out):
        raise ValueError(f"SACConfig.gripper_indices: {tuple(indices)} name the same entry twice")
    return tuple(sorted(out))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _backbone_views(backbone: nn.Module, params, frames, offsets, pad: int):
    """One compiled backbone pass over K shifted views per frame, shared by every camera of the same shape."""
    n, k = offsets.shape[:2]
    views = shift(jnp.repeat(frames, k, axis=0), offsets.reshape(n * k, 2), pad)
    out = backbone.apply({"params": params}, views)
    return out.reshape((n, k) + out.shape[1:])


def _init_params(defs, continuous_dim, rng, obs):
    """All network params in one compiled call (eager flax init compiles op by op, which is slow)."""
    encoder_def, critic_def, actor_def, temp_def, grasp_def = defs
    enc_rng, critic_rng, actor_rng, temp_rng, grasp_rng = jax.random.split(rng, 5)
    encoder_params = encoder_def.init(enc_rng, obs).get("params", {})
    features = encoder_def.apply({"params": encoder_params}, obs)
    params = {
        "encoder": encoder_params,
        "critic": critic_def.init(critic_rng, features, jnp.zeros((1, continuous_dim)))["params"],
        "actor": actor_def.init(actor_rng, features)["params"],
        "temp": temp_def.init(temp_rng)["params"],
    }
    if grasp_def is not None:
        params["grasp"] = grasp_def.init(grasp_rng, features)["params"]
    return params


class SACAgent(struct.PyTreeNode):
    """Immutable SAC agent; every method returns a new agent."""

    actor: TrainState
    critic: TrainState  # params: {"encoder": ..., "critic": ...}
    target_critic_params: Any
    temp: TrainState
    grasp: Optional[TrainState]
    target_grasp_params: Any
    rng: jnp.ndarray
    step: jnp.ndarray
    config: SACConfig = struct.field(pytree_node=False)
    image_keys: tuple = struct.field(pytree_node=False)
    continuous_dim: int = struct.field(pytree_node=False)
    continuous_indices: tuple = struct.field(pytree_node=False)  # the action entries the actor outputs, in order
    gripper_indices: tuple = struct.field(pytree_node=False)  # the entries the grasp critic chooses (none without it)
    encoder_def: nn.Module = struct.field(pytree_node=False)
    critic_def: nn.Module = struct.field(pytree_node=False)
    actor_def: nn.Module = struct.field(pytree_node=False)
    grasp_def: Optional[nn.Module] = struct.field(pytree_node=False)
    temp_def: nn.Module = struct.field(pytree_node=False)

    @classmethod
    def create(cls, rng, observation_example: dict, action_dim: int, config: SACConfig = SACConfig()) -> "SACAgent":
        """Build networks and optimisers. `observation_example` is one unbatched flat observation;
        `action_dim` counts the stored action entries (including the gripper when grasp_critic is on)."""
        if isinstance(rng, int):
            rng = jax.random.PRNGKey(rng)
        if not isinstance(observation_example, dict):
            raise ValueError("observation_example: expected a flat dict like {'state': (d,), '<camera>': (H, W, 3)}")
        gripper_indices = _action_indices(config.gripper_indices, action_dim) if config.grasp_critic else ()
        continuous_indices = tuple(i for i in range(action_dim) if i not in gripper_indices)
        continuous_dim = len(continuous_indices)
        if continuous_dim < 1:
            raise ValueError(f"action_dim: {action_dim} leaves no continuous action dimension")
        image_keys = image_keys_of(observation_example)
        encoder_def = EncodedObservation(
            image_keys=image_keys,
            backbone=config.encoder,
            share_encoder=config.share_encoder,
            freeze_backbone=config.freeze_backbone,
            latent_dim=config.encoder_latent_dim,
            resnet_filters=config.resnet_filters,
            proprio_latent_dim=config.proprio_latent_dim,
        )
        critic_def = CriticEnsemble(config.hidden_dims, config.num_qs, config.activation, config.critic_layer_norm)
        actor_def = TanhGaussianActor(config.hidden_dims, continuous_dim, config.activation, config.actor_layer_norm,
                                      log_std_max=float(np.log(config.policy_std_max)))
        if config.pretrained_backbone and not image_keys:
            raise ValueError("SACConfig.pretrained_backbone: the observations have no camera to encode")
        temp_def = Temperature(config.init_temperature)
        grasp_def = None
        if config.grasp_critic:
            grasp_def = DiscreteCritic(config.hidden_dims, losses.NUM_GRIPPER_ACTIONS ** len(gripper_indices),
                                       config.activation, config.critic_layer_norm)
        rng, init_rng = jax.random.split(rng)
        params = _init_params((encoder_def, critic_def, actor_def, temp_def, grasp_def), continuous_dim, init_rng,
                              _add_batch_axis(observation_example))
        if config.pretrained_backbone:
            params["encoder"] = insert_backbone_params(
                params["encoder"], load_backbone_params(config.pretrained_backbone), config.pretrained_backbone
            )
        critic_params = {"encoder": params["encoder"], "critic": params["critic"]}
        critic = TrainState.create(apply_fn=None, params=critic_params, tx=_adam(config.critic_lr))
        actor = TrainState.create(apply_fn=None, params=params["actor"], tx=_adam(config.actor_lr))
        temp = TrainState.create(apply_fn=None, params=params["temp"], tx=_adam(config.temp_lr))
        grasp = None
        if grasp_def is not None:
            grasp = TrainState.create(apply_fn=None, params=params["grasp"], tx=_adam(config.grasp_lr))
        # TrainState starts its step as a Python int; an int32 array keeps one jit signature from the start
        actor, critic, temp = (s.replace(step=jnp.zeros((), jnp.int32)) for s in (actor, critic, temp))
        grasp = grasp.replace(step=jnp.zeros((), jnp.int32)) if grasp is not None else None
        return cls(
            actor=actor, critic=critic, target_critic_params=critic_params, temp=temp, grasp=grasp,
            target_grasp_params=grasp.params if grasp is not None else None, rng=rng,
            step=jnp.zeros((), jnp.int32), config=config, image_keys=image_keys, continuous_dim=continuous_dim,
            continuous_indices=continuous_indices, gripper_indices=gripper_indices,
            encoder_def=encoder_def, critic_def=critic_def, actor_def=actor_def, grasp_def=grasp_def,
            temp_def=temp_def,
        )

    # ---- network calls -------------------------------------------------------------------------
    def encode(self, encoder_params, observations):
        return self.encoder_def.apply({"params": encoder_params}, observations)

    def policy(self, actor_params, features):
        return self.actor_def.apply({"params": actor_params}, features)

    def q_values(self, critic_params, features, actions):
        return self.critic_def.apply({"params": critic_params}, features, actions)

    def target_min_q(self, rng, features, actions):
        """Min over a random subset of target critics; only the chosen members are evaluated."""
        num_min = self.config.num_min_qs or self.config.num_qs
        params = self.target_critic_params["critic"]
        if num_min < self.config.num_qs:
            subset = losses.subset_indices(rng, self.config.num_qs, num_min)
            params = jax.tree_util.tree_map(lambda p: p[subset], params)
            return self.critic_def.clone(num_qs=num_min).apply({"params": params}, features, actions).min(axis=0)
        return self.q_values(params, features, actions).min(axis=0)

    def temperature(self, temp_params=None):
        return self.temp_def.apply({"params": self.temp.params if temp_params is None else temp_params})

    def grasp_q(self, grasp_params, features):
        return self.grasp_def.apply({"params": grasp_params}, features)

    @property
    def target_entropy(self) -> float:
        if self.config.target_entropy is not None:
            return self.config.target_entropy
        return -self.continuous_dim / 2.0

    # ---- cached backbone features ------------------------------------------------------------------
    @property
    def caches_features(self) -> bool:
        """Whether the learner should train on cached backbone features (a frozen backbone over cameras)."""
        return bool(self.image_keys and self.config.freeze_backbone and self.config.feature_cache)

    def backbone_views(self, camera: str, frames, offsets):
        """The frozen backbone's output on shifted views of one camera's frames: frames (N, H, W, 3) uint8,
        offsets (N, K, 2) in [0, 2 * augment_pad] -> (N, K, h, w, c); what ``update`` takes in place of frames."""
        name = "encoder_shared" if self.config.share_encoder else f"encoder_{camera}"
        backbone = make_backbone(self.config.encoder, self.config.resnet_filters, name=None)
        return _backbone_views(backbone, self.critic.params["encoder"][name]["backbone"], frames, offsets,
                               self.config.augment_pad)

    # ---- update steps ----------------------------------------------------------------------------
    def _augment(self, rng, batch):
        if not (self.image_keys and self.config.augment):
            return batch
        obs_rng, next_rng = jax.random.split(rng)
        batch = dict(batch)
        batch["observations"] = augment_observations(
            obs_rng, batch["observations"], self.image_keys, self.config.augment_pad
        )
        batch["next_observations"] = augment_observations(
            next_rng, batch["next_observations"], self.image_keys, self.config.augment_pad
        )
        return batch

    def _target_encoder_params(self):
        """Target encoder params; a frozen backbone is taken from the online encoder, so the backbone pass on
        next observations is the same computation for online and target features and XLA computes it once."""
        target = self.target_critic_params["encoder"]
        if not (self.config.freeze_backbone and self.image_keys):
            return target
        online = self.critic.params["encoder"]
        return {
            k: {**v, "backbone": online[k]["backbone"]} if k.startswith("encoder_") else v for k, v in target.items()
        }

    def update_critic(self, batch, rng):
        """One critic (and grasp-critic) gradient step on one minibatch; targets follow by Polyak."""
        cfg = self.config
        next_rng, subset_rng = jax.random.split(rng)
        continuous_actions = self._continuous(batch["actions"])

        next_features = jax.lax.stop_gradient(self.encode(self.critic.params["encoder"], batch["next_observations"]))
        next_mean, next_log_std = self.policy(self.actor.params, next_features)
        next_actions, next_log_prob = sample_tanh_gaussian(next_rng, next_mean, next_log_std)
        target_next_features = self.encode(self._target_encoder_params(), batch["next_observations"])
        next_q = self.target_min_q(subset_rng, target_next_features, next_actions)
        target = losses.td_target(
            batch["rewards"], batch["masks"], cfg.discount, next_q, next_log_prob,
            self.temperature(), cfg.backup_entropy,
        )

        def loss_fn(params):
            features = self.encode(params["encoder"], batch["observations"])
            qs = self.q_values(params["critic"], features, continuous_actions)
            return losses.critic_loss(qs, target), (qs, features)

        (loss, (qs, features)), grads = jax.value_and_grad(loss_fn, has_aux=True)(self.critic.params)
        critic = self.critic.apply_gradients(grads=grads)
        target_critic_params = _polyak(critic.params, self.target_critic_params, cfg.tau)
        metrics = {"critic_loss": loss, "q": qs.mean(), "target_q": target.mean()}
        agent = self.replace(critic=critic, target_critic_params=target_critic_params)

        if self.grasp is not None:
            features = jax.lax.stop_gradient(features)
            grasp_target = losses.grasp_td_target(
                batch["rewards"] + batch.get("grasp_penalty", 0.0), batch["masks"], cfg.discount,
                self.grasp_q(self.grasp.params, next_features),
                self.grasp_q(self.target_grasp_params, target_next_features),
            )
            action_index = losses.joint_gripper_index(batch["actions"][:, np.asarray(self.gripper_indices)])

            def grasp_loss_fn(params):
                q_values = self.grasp_q(params, features)
                loss = losses.grasp_critic_loss(q_values, action_index, grasp_target)
                if cfg.bc_weight and "demo" in batch:
                    margin = losses.grasp_margin_loss(q_values, action_index, batch["demo"], cfg.grasp_margin)
                    loss = loss + cfg.bc_weight * margin
                return loss

            grasp_loss, grasp_grads = jax.value_and_grad(grasp_loss_fn)(self.grasp.params)
            grasp = self.grasp.apply_gradients(grads=grasp_grads)
            target_grasp_params = _polyak(grasp.params, self.target_grasp_params, cfg.tau)
            agent = agent.replace(grasp=grasp, target_grasp_params=target_grasp_params)
            metrics["grasp_loss"] = grasp_loss
        return agent, metrics

    def update_actor(self, batch, rng):
        """One actor step (critic features stop-gradient, mean over the ensemble, plus `bc_weight` times the
        behaviour-cloning error on demo rows) then one temperature step."""
        features = jax.lax.stop_gradient(self.encode(self.critic.params["encoder"], batch["observations"]))
        temperature = self.temperature()
        bc_weight = self.config.bc_weight
        demo_rows = batch.get("demo")

        def loss_fn(params):
            mean, log_std = self.policy(params, features)
            actions, log_prob = sample_tanh_gaussian(rng, mean, log_std)
            qs = self.q_values(self.critic.params["critic"], features, actions)
            loss = losses.actor_loss(qs, log_prob, temperature)
            bc = jnp.zeros(())
            if bc_weight and demo_rows is not None:
                demo_actions = self._continuous(batch["actions"])
                if self.config.bc_likelihood:
                    bc = losses.bc_nll_loss(mean, log_std, demo_actions, demo_rows)
                else:
                    bc = losses.bc_loss(jnp.tanh(mean), demo_actions, demo_rows)
            return loss + bc_weight * bc, (-log_prob.mean(), bc)

        (loss, (entropy, bc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(self.actor.params)
        actor = self.actor.apply_gradients(grads=grads)

        def temp_loss_fn(params):
            return losses.temperature_loss(self.temperature(params), entropy, self.target_entropy)

        temp_loss, temp_grads = jax.value_and_grad(temp_loss_fn)(self.temp.params)
        temp = self.temp.apply_gradients(grads=temp_grads)
        metrics = {"actor_loss": loss, "entropy": entropy, "temperature": temperature, "temperature_loss": temp_loss,
                   "bc_loss": bc}
        return self.replace(actor=actor, temp=temp), metrics

    @jax.jit
    def update(self, batch) -> tuple["SACAgent", dict]:
        """utd_ratio critic steps over minibatch slices (lax.scan), then actor + temperature once."""
        utd = self.config.utd_ratio
        total = batch["rewards"].shape[0]
        if total % utd:
            raise ValueError(f"batch: {total} rows is not a multiple of utd_ratio={utd}")
        rng, aug_rng, scan_rng, actor_rng = jax.random.split(self.rng, 4)
        batch = self._augment(aug_rng, batch)
        minibatches = jax.tree_util.tree_map(lambda x: x.reshape((utd, total // utd) + x.shape[1:]), batch)

        def critic_step(agent, inputs):
            minibatch, step_rng = inputs
            return agent.update_critic(minibatch, step_rng)

        agent, critic_metrics = jax.lax.scan(critic_step, self, (minibatches, jax.random.split(scan_rng, utd)))
        metrics = jax.tree_util.tree_map(jnp.mean, critic_metrics)
        last = jax.tree_util.tree_map(lambda x: x[-1], minibatches)

        def with_actor(a):
            return a.update_actor(last, actor_rng)

        def without_actor(a):
            shapes = jax.eval_shape(lambda b: b.update_actor(last, actor_rng)[1], a)
            return a, jax.tree_util.tree_map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

        if self.config.actor_update_period == 1:
            agent, actor_metrics = with_actor(agent)
        else:
            agent, actor_metrics = jax.lax.cond(
                self.step % self.config.actor_update_period == 0, with_actor, without_actor, agent
            )
        metrics.update(actor_metrics)
        return agent.replace(rng=rng, step=self.step + 1), metrics

    # ---- acting ----------------------------------------------------------------------------------
    def _act(self, observations, rng, deterministic: bool):
        if "state" in observations:
            single = observations["state"].ndim == 1
        else:
            single = observations[self.image_keys[0]].ndim == 3
        obs = _add_batch_axis(observations) if single else observations
        features = self.encode(self.critic.params["encoder"], obs)
        mean, log_std = self.policy(self.actor.params, features)
        if deterministic:
            actions = jnp.tanh(mean)
        else:
            if self.config.explore_std_max is not None:
                log_std = jnp.minimum(log_std, float(np.log(self.config.explore_std_max)))
            actions, _ = sample_tanh_gaussian(rng, mean, log_std)
        if self.grasp is not None:
            best = jnp.argmax(self.grasp_q(self.grasp.params, features), axis=-1)
            grippers = losses.joint_gripper_actions(best, len(self.gripper_indices))
            full = jnp.zeros((actions.shape[0], self.continuous_dim + len(self.gripper_indices)), actions.dtype)
            actions = full.at[:, np.asarray(self.continuous_indices)].set(actions)
            actions = actions.at[:, np.asarray(self.gripper_indices)].set(grippers)
        return actions[0] if single else actions

    def _continuous(self, actions):
        """The actor's entries of stored actions (B, A) -> (B, continuous_dim)."""
        if self.continuous_indices == tuple(range(self.continuous_dim)):
            return actions[:, : self.continuous_dim]
        return actions[:, np.asarray(self.continuous_indices)]

    @jax.jit
    def sample_actions(self, observations, rng):
        """Stochastic actions in [-1, 1] (gripper in {-1, 0, 1} when the grasp critic is on); single or batched obs."""
        return self._act(observations, rng, deterministic=False)

    @jax.jit
    def eval_actions(self, observations):
        """Deterministic (tanh of the mean) actions; single or batched obs."""
        return self._act(observations, None, deterministic=True)
