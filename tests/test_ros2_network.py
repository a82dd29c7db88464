"""DDS stays on loopback: the twin node and Ros2Backend bind no socket beyond 127.0.0.0/8 or ::1 unless
opened with ``network="lan"``, and stock ROS 2 nodes on the same machine still reach them."""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("rclpy")
if importlib.util.find_spec("mujoco") is None:
    pytest.skip("mujoco is not installed", allow_module_level=True)
if not sys.platform.startswith("linux"):
    pytest.skip("reads sockets from /proc", allow_module_level=True)

import backend_episode  # noqa: E402

from robot_servers.backends.ros2 import Ros2Backend, Ros2Config  # noqa: E402
from robot_servers.ros2 import network  # noqa: E402
from robot_servers.ros2.twin_node import running_twin_node  # noqa: E402

pytestmark = [pytest.mark.ros2, pytest.mark.timeout(120)]

DOMAIN = 223 + os.getpid() % 5  # 223..232: apart from the other ROS 2 tests, above Linux's ephemeral ports
LAN_DOMAIN = DOMAIN + 5
STALE_AFTER = 5.0  # s; on a loaded 2-core machine a twin node can fall seconds behind
wait_for = functools.partial(backend_episode.wait_for, period=0.02)

if network.user_settings():
    pytest.skip(f"DDS configured by the environment: {network.user_settings()}", allow_module_level=True)


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    # /proc prints the address as 32-bit words in host order (little-endian here)
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(swapped)


def inet_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(protocol, local address, port) of every UDP and TCP socket the process holds, as ss -anup/-antp lists them."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for protocol in ("udp", "udp6", "tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{protocol}") as table:
                rows = table.read().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for row in rows:
            fields = row.split()
            if fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((protocol, str(_address(address)), int(port, 16)))
    return found


def beyond_loopback(sockets: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    def loopback(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        mapped = getattr(ip, "ipv4_mapped", None)
        return (mapped or ip).is_loopback

    return [s for s in sockets if not loopback(s[1])]


def ours(pid: int, before: set) -> list[tuple[str, str, int]]:
    """The process's sockets that were not there before (earlier tests in this process hold their own)."""
    return [s for s in inet_sockets(pid) if s not in before]


@pytest.fixture(scope="module")
def twin_and_backend():
    before = set(inet_sockets(os.getpid()))
    with running_twin_node(DOMAIN) as twin, Ros2Backend(Ros2Config(domain_id=DOMAIN, stale_after=STALE_AFTER)) as backend:
        yield twin, backend, before


def test_twin_node_and_backend_bind_nothing_beyond_loopback(twin_and_backend):
    twin, backend, before = twin_and_backend
    start = backend.state().tcp_pose
    target = start.copy()
    target[0] += 0.02
    backend.set_target(target)  # traffic both ways before the sockets are read
    assert wait_for(lambda: abs(backend.state().tcp_pose[0] - target[0]) < 0.005, 20.0), backend.state().tcp_pose
    for name, pid, held in (("twin node", twin.pid, set()), ("backend", os.getpid(), before)):
        sockets = ours(pid, held)
        assert any(protocol == "udp" for protocol, _, _ in sockets), f"{name}: no DDS socket found: {sockets}"
        assert beyond_loopback(sockets) == [], f"{name} binds beyond loopback: {sockets}"
        print(f"\n{name} (pid {pid}): {sorted(sockets)}")
    backend.set_target(start)


STOCK_CLIENT = textwrap.dedent("""
    import sys, time, rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    rclpy.init(domain_id=int(sys.argv[1]))
    node = rclpy.create_node("stock_client")
    got = []
    node.create_subscription(PoseStamped, "current_pose", got.append, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + float(sys.argv[2])
    while not got and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    print("RECEIVED" if got else "NOTHING", flush=True)
""")


def test_a_stock_ros2_node_on_the_same_machine_still_reaches_the_confined_twin(twin_and_backend):  # noqa: ARG001
    env = {k: v for k, v in os.environ.items() if k not in network.USER_VARIABLES}  # ROS 2's defaults
    result = subprocess.run([sys.executable, "-c", STOCK_CLIENT, str(DOMAIN), "30"], env=env,
                            capture_output=True, text=True, timeout=90, check=False)
    assert "RECEIVED" in result.stdout, result.stdout + result.stderr


def test_lan_opens_the_twin_and_a_confined_backend_still_reaches_it():
    """``--network lan``: ROS 2's defaults (every interface), as crisp_controllers on the robot PC."""
    config = Ros2Config(domain_id=LAN_DOMAIN, stale_after=STALE_AFTER, node_name="lan_robot_server")
    before = set(inet_sockets(os.getpid()))
    with running_twin_node(LAN_DOMAIN, "--network", "lan") as twin, Ros2Backend(config) as backend:
        assert np.all(np.isfinite(backend.state().tcp_pose))
        assert beyond_loopback(inet_sockets(twin.pid)), "a twin node opened to the LAN binds beyond loopback"
        assert beyond_loopback(ours(os.getpid(), before)) == []


def test_users_own_dds_settings_decide_and_lan_drops_an_inherited_profile(monkeypatch):
    monkeypatch.setattr(network, "_decided", None)
    for name in network.USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert network.confine("localhost") == "localhost"
    ours = os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"]
    assert "127.0.0.1" in pathlib.Path(ours).read_text()

    monkeypatch.setattr(network, "_decided", None)  # a child process inheriting that environment, started with lan
    assert network.confine("lan") == "environment"
    assert not any(name in os.environ for name in network.PROFILE_VARIABLES)

    monkeypatch.setattr(network, "_decided", None)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    assert network.confine("localhost") == "environment"
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in os.environ

    monkeypatch.setattr(network, "_decided", "localhost")  # Fast DDS keeps a profile it loaded
    monkeypatch.delenv("ROS_AUTOMATIC_DISCOVERY_RANGE")
    with pytest.raises(RuntimeError, match="one network per process"):
        network.confine("lan")
    with pytest.raises(ValueError, match="network"):
        Ros2Config(network="wan")
