"""Which network this project's ROS 2 (DDS) participants use: loopback only, unless opened on purpose.

ROS 2's defaults (Jazzy, Fast DDS) bind UDP on every interface and discover the whole subnet, so anyone
on the LAN with the same ``ROS_DOMAIN_ID`` could publish targets to the controller, past the robot
server's token and safety box. ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (and the deprecated
``ROS_LOCALHOST_ONLY``) only limit discovery: the sockets still bind 0.0.0.0.

``localhost`` (the default) points Fast DDS at a profile that whitelists 127.0.0.1, adds shared memory
and discovers peers by unicast on loopback: no socket is bound beyond loopback, and stock ROS 2 nodes
on the same machine are still found. ``lan`` leaves DDS to ROS's defaults and the environment. Either
way, DDS variables the user set (profile files, discovery range, static peers, builtin transports) are
left alone and decide. Fast DDS reads the profile when a context's first node is created and keeps
it for the rest of the process, so ``confine`` runs before the process's first rclpy context
(``init_context`` does both), and one process stays on one network.

``python -m robot_servers.ros2.network > profile.xml`` writes the profile, to confine other ROS 2
processes the same way (``FASTRTPS_DEFAULT_PROFILES_FILE=profile.xml``).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

NETWORKS: tuple[str, ...] = ("localhost", "lan")
# Fast DDS 2.x (Jazzy) reads the first, Fast DDS 3.x the second.
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
USER_VARIABLES = PROFILE_VARIABLES + (
    "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_STATIC_PEERS", "ROS_LOCALHOST_ONLY", "FASTDDS_BUILTIN_TRANSPORTS")

# Unicast discovery on loopback reaches participant ids below maxInitialPeersRange (Fast DDS's default, 4,
# loses the fifth process on a machine).
LOCALHOST_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>serl_loopback_udp</transport_id>
      <type>UDPv4</type>
      <maxInitialPeersRange>32</maxInitialPeersRange>
      <interfaceWhiteList><address>127.0.0.1</address></interfaceWhiteList>
    </transport_descriptor>
    <transport_descriptor>
      <transport_id>serl_shm</transport_id>
      <type>SHM</type>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="serl_localhost_only" is_default_profile="true">
    <rtps>
      <builtin>
        <initialPeersList>
          <locator><udpv4><address>127.0.0.1</address></udpv4></locator>
        </initialPeersList>
        <metatrafficUnicastLocatorList>
          <locator><udpv4><address>127.0.0.1</address></udpv4></locator>
        </metatrafficUnicastLocatorList>
      </builtin>
      <userTransports>
        <transport_id>serl_loopback_udp</transport_id>
        <transport_id>serl_shm</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""

_decided: str | None = None  # what this process's first participant runs on: "localhost" or "environment"


def profile_path() -> Path:
    """The localhost profile, written into a directory only this user can write (others could open it)."""
    directory = Path(tempfile.gettempdir()) / f"serl-ros2-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{directory} is not a directory only this user can write: remove it")
    path = directory / "fastdds_localhost.xml"
    if not path.is_file() or path.read_text() != LOCALHOST_PROFILE:
        partial = directory / f".fastdds_localhost.{os.getpid()}.xml"
        partial.write_text(LOCALHOST_PROFILE)
        os.replace(partial, path)
    return path


def _ours(value: str | None) -> bool:
    path = Path(value or "")
    return path.name == "fastdds_localhost.xml" and path.parent.name.startswith("serl-ros2-")


def user_settings() -> dict[str, str]:
    """The DDS network variables the user set (our own profile, inherited from a parent process, is not one)."""
    return {name: os.environ[name] for name in USER_VARIABLES
            if os.environ.get(name) and not (name in PROFILE_VARIABLES and _ours(os.environ[name]))}


def confine(network: str = "localhost") -> str:
    """Set this process's DDS environment for ``network`` before its first rclpy context.

    Returns what decides: ``"localhost"`` (our profile) or ``"environment"`` (``lan``, or the user's own
    DDS variables). Raises if an earlier call in this process decided otherwise: Fast DDS keeps a loaded profile.
    """
    global _decided
    if network not in NETWORKS:
        raise ValueError(f"ROS 2 network: expected one of {NETWORKS}, got {network!r}")
    own = user_settings()
    decided = "localhost" if network == "localhost" and not own else "environment"
    if _decided is not None and decided != _decided:
        raise RuntimeError(f"ROS 2 network {network!r} asked for, but this process's DDS already runs on "
                           f"{_decided!r} (Fast DDS keeps the profile it loaded): use one network per process")
    if decided == "localhost":
        rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
        if rmw.startswith("rmw_fastrtps"):
            path = str(profile_path())
            for name in PROFILE_VARIABLES:
                os.environ[name] = path
        else:  # the Fast DDS profile does not apply there
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
            log.warning("RMW_IMPLEMENTATION=%s: discovery limited to localhost, but sockets may bind every "
                        "interface; use rmw_fastrtps_cpp or confine that DDS yourself", rmw)
    elif not own:
        for name in PROFILE_VARIABLES:
            if _ours(os.environ.get(name)):  # inherited from a parent process on localhost
                del os.environ[name]
    if _decided is None and decided == "environment":
        if own:
            log.info("ROS 2 network from the environment: %s", own)
        else:
            log.warning("ROS 2 network open to the LAN: anyone there on the same ROS_DOMAIN_ID can reach these topics")
    _decided = decided
    return decided


def summary() -> dict:
    """What this process's DDS runs on, for the pre-flight report."""
    return {"loopback_only": _decided == "localhost", "user_settings": user_settings()}


def init_context(domain_id: int | None, network: str = "localhost"):
    """A new rclpy ``Context``, initialised on ``domain_id`` after ``confine(network)``."""
    import rclpy

    confine(network)
    context = rclpy.Context()
    context.init(domain_id=domain_id)
    return context


if __name__ == "__main__":  # the profile, for confining other ROS 2 processes: FASTRTPS_DEFAULT_PROFILES_FILE
    print(LOCALHOST_PROFILE, end="")
