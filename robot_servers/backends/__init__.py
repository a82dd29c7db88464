"""Backend registry: ``make_backend(name, **options)`` imports each implementation lazily.

A sim-only user never imports rclpy or franky; a missing optional library fails with a message
naming the extra to install.
"""

from __future__ import annotations

from typing import Any, Callable

from robot_servers.backends.base import Backend


def _twin(**options: Any) -> Backend:
    from robot_servers.backends.twin import TwinBackend, TwinConfig

    return TwinBackend(TwinConfig(**options))


def _ros2(**options: Any) -> Backend:
    from robot_servers.backends.ros2 import Ros2Backend

    return Ros2Backend(**options)


def _libfranka(**options: Any) -> Backend:
    from robot_servers.backends.libfranka import LibfrankaBackend

    return LibfrankaBackend(**options)


def _libfranka_torque(**options: Any) -> Backend:
    from robot_servers.backends.libfranka_torque import TorqueLoopBackend

    return TorqueLoopBackend(**options)


def _serl_http(**options: Any) -> Backend:
    from robot_servers.backends.serl_http import SerlHttpBackend

    return SerlHttpBackend(**options)


# name -> (factory, extra that provides its dependencies)
_REGISTRY: dict[str, tuple[Callable[..., Backend], str]] = {
    "twin": (_twin, "sim"),
    "ros2": (_ros2, "ros2"),
    "libfranka": (_libfranka, "franka"),
    "libfranka-torque": (_libfranka_torque, "franka-torque"),  # our full law (SERL's Ki, asymmetric clips)
    "serl-http": (_serl_http, ""),  # a SERL / HIL-SERL Flask server: --option url=http://host:5000/
}


def register_backend(name: str, factory: Callable[..., Backend], extra: str = "") -> None:
    """Add a backend: ``factory(**options)`` must return a ``Backend`` (import heavy libraries inside it)."""
    _REGISTRY[name] = (factory, extra)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def make_backend(name: str, **options: Any) -> Backend:
    """Build the backend ``name`` ("twin", "ros2", "libfranka") with its keyword options."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {backend_names()}")
    factory, extra = _REGISTRY[name]
    try:
        return factory(**options)
    except ModuleNotFoundError as exc:
        hint = f"; install it with: pip install 'serl-suite[{extra}]'" if extra else ""
        raise ImportError(f"backend {name!r} needs {exc.name!r}, which is not installed{hint}") from exc


__all__ = ["Backend", "make_backend", "register_backend", "backend_names"]
