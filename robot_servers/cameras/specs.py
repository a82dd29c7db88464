"""Real cameras from command-line specs, for the robot server of a real arm.

``realsense:wrist_1=128422270679:640x480@30,crop=0:80:480:480,size=128x128``
``opencv:front=/dev/video0,size=128x128``

A task's ``CameraSpec`` (crop, size, serial) fills what a spec leaves out, matched by camera name;
with no specs at all, the task's cameras that name a device (``serial``) are opened.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from robot_servers.cameras.base import Camera
from robot_servers.cameras.opencv import OpenCVCamera, OpenCVCameraConfig
from robot_servers.cameras.realsense import RealSenseCamera, RealSenseConfig


def parse_camera_spec(spec: str) -> RealSenseConfig | OpenCVCameraConfig:
    """One ``kind:name=source,...`` spec → its camera config (ValueError naming the problem)."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"camera spec {spec!r}: expected realsense:... or opencv:...")
    if kind == "realsense":
        return RealSenseConfig.parse(rest)
    if kind == "opencv":
        return OpenCVCameraConfig.parse(rest)
    raise ValueError(f"camera spec {spec!r}: unknown kind {kind!r} (realsense | opencv)")


def with_task_defaults(config, task_cameras: Iterable) -> RealSenseConfig | OpenCVCameraConfig:
    """Fill crop and size from the task's ``CameraSpec`` of the same name when the spec left the defaults."""
    by_name = {camera.name: camera for camera in task_cameras}
    task_camera = by_name.get(config.name)
    if task_camera is None:
        return config
    updates = {}
    if config.crop is None and task_camera.crop is not None:
        updates["crop"] = tuple(task_camera.crop)
    if task_camera.size is not None:
        updates["size"] = tuple(task_camera.size)
    return dataclasses.replace(config, **updates)


def open_cameras(specs: Iterable[str], task_cameras: Iterable = ()) -> dict[str, Camera]:
    """Open every camera of ``specs`` (names must be unique); closes those already open on failure."""
    task_cameras = tuple(task_cameras)
    configs = [with_task_defaults(parse_camera_spec(s), task_cameras) for s in specs]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"cameras: names must be unique, got {names}")
    cameras: dict[str, Camera] = {}
    try:
        for config in configs:
            cameras[config.name] = RealSenseCamera(config) if isinstance(config, RealSenseConfig) else OpenCVCamera(config)
    except Exception:
        for camera in cameras.values():
            camera.close()
        raise
    return cameras


def task_camera_specs(task_cameras: Iterable) -> tuple[str, ...]:
    """Specs for the task's cameras that name their device in ``CameraSpec.serial``.

    ``serial`` may carry its kind ("realsense:1234…", "opencv:/dev/video0"); otherwise a string of
    8+ digits is a RealSense serial and anything else (device index, path, URL) goes to OpenCV.
    """
    specs = []
    for camera in task_cameras:
        if not camera.serial:
            continue
        kind, sep, source = str(camera.serial).partition(":")
        if sep and kind in ("realsense", "opencv"):
            specs.append(f"{kind}:{camera.name}={source}")
        elif str(camera.serial).isdigit() and len(str(camera.serial)) >= 8:
            specs.append(f"realsense:{camera.name}={camera.serial}")
        else:
            specs.append(f"opencv:{camera.name}={camera.serial}")
    return tuple(specs)


def open_task_cameras(specs: Iterable[str], task_cameras: Iterable = ()) -> dict[str, Camera]:
    """``specs`` (or, when empty, the task's cameras that name a device) with the task's crops and sizes."""
    task_cameras = tuple(task_cameras)
    specs = tuple(specs) or task_camera_specs(task_cameras)
    return open_cameras(specs, task_cameras) if specs else {}


def camera_errors(cameras: Mapping[str, Camera]) -> list[str]:
    """Capture faults of cameras that report them (``error`` attribute), for state and health."""
    return [camera.error for camera in cameras.values() if getattr(camera, "error", None)]
