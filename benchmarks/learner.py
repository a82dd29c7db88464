"""Learner benchmark: state RLPD update rate (ours vs sbx), pixel DrQ update rate, compile time at two UTDs,
achieved GFLOP/s against measured dense-matmul GFLOP/s, and replay bytes per transition; for the pixel PickCube
configuration and SERL's own (frozen ResNet-10 on 2 x 128²), updates on cached backbone features against updates
recomputing the backbone, and the resident memory of a feature-cached buffer at 50k transitions.

Prints one JSON object. `--quick` runs tiny sizes, one UTD, without the peer (CI smoke test).
The sbx peer runs in its own virtual environment (.venvs/sbx), created on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SBX_VENV = ROOT / ".venvs" / "sbx"

SBX_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, gymnasium as gym, jax
    from sbx import SAC
    from stable_baselines3.common.logger import configure
    obs_dim, act_dim, hidden, n_critics, batch, utd, calls = map(int, sys.argv[1:8])
    class Env(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        action_space = gym.spaces.Box(-1, 1, (act_dim,), np.float32)
        def reset(self, seed=None, options=None): return np.zeros(obs_dim, np.float32), {}
        def step(self, a): return np.zeros(obs_dim, np.float32), 0.0, False, False, {}
    model = SAC("MlpPolicy", Env(), buffer_size=10_000, learning_starts=0, batch_size=batch, gradient_steps=utd,
                policy_delay=utd, policy_kwargs=dict(net_arch=[hidden, hidden], n_critics=n_critics, layer_norm=True),
                seed=0, verbose=0)
    model.set_logger(configure(None, []))
    rb, rng, n = model.replay_buffer, np.random.default_rng(0), 10_000
    rb.observations[:] = rng.normal(size=rb.observations.shape)
    rb.next_observations[:] = rng.normal(size=rb.next_observations.shape)
    rb.actions[:] = rng.uniform(-1, 1, rb.actions.shape)
    rb.rewards[:] = rng.normal(size=rb.rewards.shape)
    rb.full = True
    t = time.perf_counter(); model.train(utd, batch); jax.block_until_ready(model.policy.qf_state.params)
    print(json.dumps({"first_call_s": time.perf_counter() - t}), flush=True)
    for line in sys.stdin:  # one timed round of `calls` train() calls per request, interleaved with ours
        t = time.perf_counter()
        for _ in range(calls):
            model.train(utd, batch)
        jax.block_until_ready(model.policy.qf_state.params)
        print(json.dumps({"per_call_s": (time.perf_counter() - t) / calls}), flush=True)
""")


def ensure_sbx_venv() -> pathlib.Path:
    """Create .venvs/sbx with torch (CPU build first) and sbx-rl when missing; return its python."""
    python = SBX_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import sbx"], capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(SBX_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # CPU build; otherwise pip pulls a multi-GB CUDA build
    subprocess.run(pip + ["sbx-rl", "gymnasium>=1.0"], check=True)
    return python


def _random_batch(rng, n, obs_example, action_dim):
    def obs():
        out = {}
        for k, v in obs_example.items():
            if v.dtype == np.uint8:
                out[k] = rng.integers(0, 256, (n,) + v.shape, np.uint8)
            else:
                out[k] = rng.normal(size=(n,) + v.shape).astype(np.float32)
        return out

    return {"observations": obs(), "next_observations": obs(),
            "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "masks": np.ones(n, np.float32)}


def _time_calls(agent, batches, calls):
    import jax

    t = time.perf_counter()
    for i in range(calls):
        agent, metrics = agent.update(batches[i % len(batches)])
    jax.block_until_ready(agent)
    return (time.perf_counter() - t) / calls


def _first_call(agent, batch):  # noqa: D103 - trace + compile + one run
    import jax

    t = time.perf_counter()
    agent, _ = agent.update(batch)
    jax.block_until_ready(agent)
    return agent, time.perf_counter() - t


def matmul_gflops(size: int, repeats: int) -> float:
    """Measured dense float32 matmul throughput on the default device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - t) / 1e9


def _start_sbx(*sizes) -> dict:
    """Start the sbx peer in its venv; it compiles and then waits for round requests on stdin."""
    try:
        python = ensure_sbx_venv()
        script = pathlib.Path(tempfile.mkdtemp()) / "sbx_peer.py"
        script.write_text(SBX_SCRIPT)
        process = subprocess.Popen([str(python), str(script), *map(str, sizes)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        first = json.loads(process.stdout.readline())
        return {"process": process, **first}
    except Exception as err:  # the peer is optional; say why it is missing
        return {"error": f"{type(err).__name__}: {err}"[:500]}


def _sbx_round(peer: dict) -> float:
    peer["process"].stdin.write("go\n")
    peer["process"].stdin.flush()
    return json.loads(peer["process"].stdout.readline())["per_call_s"]


def bench_state(quick: bool, with_peer: bool) -> dict:
    from serl.agents import SACAgent, SACConfig
    from serl.data.replay import ReplayBuffer
    from serl.data.transition import make_transition

    obs_dim, action_dim = 17, 6
    hidden, n, m, batch, utd, calls, rounds = (32, 4, 2, 16, 2, 3, 1) if quick else (256, 10, 2, 256, 20, 5, 6)
    cfg = SACConfig(hidden_dims=(hidden, hidden), num_qs=n, num_min_qs=m, critic_layer_norm=True, utd_ratio=utd)
    example = {"state": np.zeros(obs_dim, np.float32)}
    agent = SACAgent.create(0, example, action_dim, cfg)
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(example, action_dim, 10_000)
    for _ in range(2000 if not quick else 100):
        obs, next_obs = ({"state": rng.normal(size=obs_dim).astype(np.float32)} for _ in range(2))
        buffer.insert(make_transition(obs, rng.uniform(-1, 1, action_dim), 0.0, next_obs,
                                      terminated=False, truncated=False))
    agent, first = _first_call(agent, buffer.sample(batch * utd))
    batches = [buffer.sample(batch * utd) for _ in range(4)]
    peer = _start_sbx(obs_dim, action_dim, hidden, n, batch, utd, calls) if with_peer else None
    import jax

    # rounds alternate between ours and the peer; best round of each (the machine is shared and noisy)
    sampled, presampled, peer_rounds = [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            agent, _ = agent.update(buffer.sample(batch * utd))
        jax.block_until_ready(agent)
        sampled.append((time.perf_counter() - t) / calls)
        presampled.append(_time_calls(agent, batches, calls))
        if peer is not None and "error" not in peer:
            peer_rounds.append(_sbx_round(peer))
    per_call_sampled, per_call = min(sampled), min(presampled)
    result = {
        "config": {"num_qs": n, "num_min_qs": m, "layer_norm": True, "hidden": [hidden, hidden], "batch": batch,
                   "utd": utd, "obs_dim": obs_dim, "action_dim": action_dim},
        "first_call_s": round(first, 3),
        "update_calls_per_s": round(1 / per_call, 3),
        "critic_steps_per_s": round(utd / per_call, 1),
        "update_calls_per_s_with_sampling": round(1 / per_call_sampled, 3),
    }
    if peer is not None:
        if "error" in peer or not peer_rounds:
            result["sbx"] = {"error": peer.get("error", "no rounds")}
        else:
            best = min(peer_rounds)
            result["sbx"] = {"update_calls_per_s": round(1 / best, 3), "critic_steps_per_s": round(utd / best, 1),
                             "first_call_s": round(peer["first_call_s"], 3),
                             "note": "sbx SAC, same nets/batch/UTD, policy_delay=UTD, min over all critics, "
                                     "train() includes its replay sampling; best of interleaved rounds"}
            result["ratio_vs_sbx"] = round(best / per_call_sampled, 2)
            result["ratio_vs_sbx_rounds"] = [round(p / o, 2) for p, o in zip(peer_rounds, sampled)]
            peer["process"].stdin.close()
            peer["process"].wait(timeout=60)
    return result


def bench_pixels(quick: bool) -> dict:
    import jax

    from serl.agents import SACAgent, SACConfig
    from serl.data.replay import ReplayBuffer

    size, batch, calls, encoder, filters, hidden = (
        (16, 4, 2, "small", 64, (32, 32)) if quick else (128, 256, 3, "resnet10", 64, (256, 256))
    )
    utds = (1,) if quick else (1, 20)
    example = {"state": np.zeros(20, np.float32), "front": np.zeros((size, size, 3), np.uint8),
               "wrist": np.zeros((size, size, 3), np.uint8)}
    rng = np.random.default_rng(0)
    compile_times = {}
    shapes = _random_batch(rng, batch, example, 7)  # a larger UTD compiles from shapes alone
    for utd in utds:
        cfg = SACConfig(hidden_dims=hidden, num_qs=2, critic_layer_norm=True, utd_ratio=utd, encoder=encoder,
                        resnet_filters=filters, freeze_backbone=True, grasp_critic=True)
        agent = SACAgent.create(0, example, 7, cfg)
        b = _random_batch(rng, batch * utd, example, 7) if utd == 1 else jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct((batch * utd,) + x.shape[1:], x.dtype), shapes)
        t = time.perf_counter()
        compiled = SACAgent.update.lower(agent, b).compile()  # trace + XLA compile, what a first update() pays
        compile_times[utd] = time.perf_counter() - t
        if utd == 1:
            t = time.perf_counter()
            agent, _ = compiled(agent, b)
            jax.block_until_ready(agent)
            first_call = compile_times[utd] + time.perf_counter() - t
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops = float(cost["flops"]) if cost and "flops" in cost else None
            t = time.perf_counter()
            for _ in range(calls):
                agent, _ = compiled(agent, b)
            jax.block_until_ready(agent)
            per_call = (time.perf_counter() - t) / calls
    capacity = 1000
    buffer = ReplayBuffer({**example, "front": np.zeros((128, 128, 3), np.uint8),
                           "wrist": np.zeros((128, 128, 3), np.uint8)}, 7, capacity)
    frame_bytes = 2 * 128 * 128 * 3
    mm = matmul_gflops(512 if quick else 2048, 3 if quick else 10)
    gflops = flops / per_call / 1e9 if flops else None
    return {
        "config": {"cameras": 2, "image": [size, size], "encoder": encoder, "frozen_backbone": True, "batch": batch,
                   "critic_ensemble": 2, "grasp_critic": True, "augmentation": "random shift pad 4"},
        "compile_s": {f"utd{k}": round(v, 2) for k, v in compile_times.items()},
        "first_call_s_utd1": round(first_call, 2),
        "update_calls_per_s_utd1": round(1 / per_call, 4),
        "gflop_per_call": round(flops / 1e9, 2) if flops else None,
        "achieved_gflops": round(gflops, 2) if gflops else None,
        "matmul_gflops": round(mm, 2),
        "fraction_of_matmul": round(gflops / mm, 3) if gflops else None,
        "replay_bytes_per_transition": round(buffer.nbytes / capacity, 1),
        "one_observation_frame_bytes": frame_bytes,
        "replay_ratio_to_frames": round(buffer.nbytes / capacity / frame_bytes, 4),
    }


# name -> (image size, backbone, latent, batch, critic ensemble, views): the pixel PickCube configuration `serl train
# PandaPickCube --pixels` uses, and SERL's DrQ (2 x 128², frozen ResNet-10, batch 256, critic:actor 4, 2 critics)
PIXEL_CONFIGS = {
    "pickcube_pixels": (64, "small", 64, 128, 10, 4),
    "serl_resnet10": (128, "resnet10", 256, 256, 2, 4),
}


def bench_feature_cache(quick: bool) -> dict:
    """Per pixel configuration: one update on cached backbone features against the same update recomputing the
    frozen backbone on frames (ms, updates/s, compile), the cache's cost per new frame and its bytes per frame."""
    import jax

    from serl.agents import SACAgent, SACConfig
    from serl.data.feature_cache import FeatureCache
    from serl.data.replay import ReplayBuffer
    from serl.data.transition import make_transition

    configs = {"tiny": (16, "small", 8, 4, 2, 2)} if quick else PIXEL_CONFIGS
    utd, calls = (2, 2) if quick else (4, 3)
    out = {}
    for name, (size, backbone, latent, batch, num_qs, views) in configs.items():
        example = {"state": np.zeros(20, np.float32), "front": np.zeros((size, size, 3), np.uint8),
                   "wrist": np.zeros((size, size, 3), np.uint8)}
        cfg = SACConfig.rlpd_with_demo_bc(encoder=backbone, freeze_backbone=True, grasp_critic=True, num_qs=num_qs,
                                          encoder_latent_dim=latent, utd_ratio=utd, feature_views=views)
        agent = SACAgent.create(0, example, 4, cfg)
        rng = np.random.default_rng(0)
        capacity = 8 if quick else 64  # distinct transitions to sample batches from (frames are encoded once each)
        buffer = ReplayBuffer(example, 4, capacity)
        obs = {k: rng.integers(0, 256, v.shape, np.uint8) if v.dtype == np.uint8 else v for k, v in example.items()}
        for _ in range(capacity):
            nxt = {k: rng.integers(0, 256, v.shape, np.uint8) if v.dtype == np.uint8 else v for k, v in example.items()}
            buffer.insert(make_transition(obs, rng.uniform(-1, 1, 4), 0.0, nxt, terminated=False, truncated=False))
            obs = nxt
        cache = FeatureCache.from_config(buffer, agent.backbone_views, cfg)
        cache.sync()  # compiles the chunk shapes
        frames = buffer.frames["front"][:1]
        offsets = cache.offsets(np.arange(1))
        jax.block_until_ready(agent.backbone_views("front", frames, offsets))
        t = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(agent.backbone_views("front", frames, offsets))
        encode_ms_per_frame = (time.perf_counter() - t) / 3 * 2 * 1e3  # one new frame per camera, as in training
        row = {"config": {"image": [size, size], "cameras": 2, "backbone": backbone, "frozen": True,
                          "latent_dim": latent, "batch": batch, "utd": utd, "critics": num_qs, "views": views,
                          "feature_dtype": cfg.feature_dtype}}
        recompute = agent.replace(config=dataclasses.replace(cfg, feature_cache=False))
        for label, source, who in (("cached", cache, agent), ("recompute", buffer, recompute)):
            batches = [source.sample(batch * utd) for _ in range(2)]
            compiled_t = time.perf_counter()
            compiled = SACAgent.update.lower(who, batches[0]).compile()
            compile_s = time.perf_counter() - compiled_t
            state, _ = compiled(who, batches[0])
            jax.block_until_ready(state)
            timed = calls if label == "cached" else 1  # recomputing ResNet-10 at 128² takes many seconds a call
            t = time.perf_counter()
            for i in range(timed):
                state, _ = compiled(state, batches[i % 2])
            jax.block_until_ready(state)
            per_call = (time.perf_counter() - t) / timed
            row[label] = {"ms_per_update": round(per_call * 1e3, 1), "updates_per_s": round(1 / per_call, 3),
                          "compile_s": round(compile_s, 2)}
        row["speedup_cached_over_recompute"] = round(row["recompute"]["ms_per_update"] / row["cached"]["ms_per_update"], 1)
        row["cache_encode_ms_per_new_frame"] = round(encode_ms_per_frame, 2)
        frame_bytes = buffer.nbytes / capacity
        row["bytes_per_transition"] = {"replay_with_frames": round(frame_bytes), "feature_cache": cache.bytes_per_frame,
                                       "total": round(frame_bytes + cache.bytes_per_frame)}
        out[name] = row
    return out


def bench_cache_memory(quick: bool) -> dict:
    """Resident memory of a learner's online buffer plus feature cache holding 50k transitions of the pixel
    PickCube configuration (frames from a fixed pool; every stored frame gets its features written, of the
    backbone's shape: memory, not the backbone, is measured here)."""
    import resource

    from serl.agents import SACAgent, SACConfig
    from serl.data.feature_cache import FeatureCache
    from serl.data.replay import ReplayBuffer
    from serl.data.transition import make_transition

    size, backbone, latent, _, num_qs, views = PIXEL_CONFIGS["pickcube_pixels"]
    transitions = 500 if quick else 50_000
    example = {"state": np.zeros(20, np.float32), "front": np.zeros((size, size, 3), np.uint8),
               "wrist": np.zeros((size, size, 3), np.uint8)}
    cfg = SACConfig.rlpd_with_demo_bc(encoder=backbone, freeze_backbone=True, grasp_critic=True, num_qs=num_qs,
                                      encoder_latent_dim=latent, feature_views=views)
    agent = SACAgent.create(0, example, 4, cfg)

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    shape = np.shape(agent.backbone_views("front", np.zeros((1, size, size, 3), np.uint8),
                                          np.zeros((1, 1, 2), np.int32)))[2:]

    def encode(camera, frames, offsets):  # what the backbone returns, by shape: memory is the question here
        return np.ones((len(frames), offsets.shape[1]) + shape, np.float32)

    before = rss_mb()
    buffer = ReplayBuffer(example, 4, 200_000)  # the learner's default capacity
    cache = FeatureCache.from_config(buffer, encode, cfg)
    rng = np.random.default_rng(0)
    pool = [{k: rng.integers(0, 256, v.shape, np.uint8) if v.dtype == np.uint8 else v for k, v in example.items()}
            for _ in range(64)]
    for i in range(transitions):
        buffer.insert(make_transition(pool[i % 64], np.zeros(4), 0.0, pool[(i + 1) % 64], terminated=i % 100 == 99,
                                      truncated=False))
        if i % 1000 == 999:
            cache.sync()
    cache.sync()
    return {"transitions": transitions, "buffer_capacity": 200_000, "rss_growth_mb": round(rss_mb() - before),
            "expected_mb": round(buffer.num_frames * (cache.bytes_per_frame + 2 * size * size * 3) / 2**20),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no peer (CI smoke test)")
    parser.add_argument("--no-peer", action="store_true", help="skip sbx")
    parser.add_argument("--skip-pixels", action="store_true")
    parser.add_argument("--only-cache", action="store_true", help="only the feature-cache figures")
    args = parser.parse_args()
    import jax

    report = {"benchmark": "learner", "quick": args.quick, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count()}
    if not args.only_cache:
        report["state_rlpd"] = bench_state(args.quick, not (args.quick or args.no_peer))
    if not args.skip_pixels:
        if not args.only_cache:
            report["pixel_drq"] = bench_pixels(args.quick)
        report["feature_cache"] = bench_feature_cache(args.quick)
        report["feature_cache_memory"] = bench_cache_memory(args.quick)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
