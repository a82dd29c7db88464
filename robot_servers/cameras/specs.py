"""Real cameras from command-line specs, for the robot server of a real arm.

``realsense:wrist_1=128422270679:640x480@30,crop=0:80:480:480,size=128x128``
``opencv:front=/dev/video0,size=128x128``

A task's ``CameraSpec`` (crop, size, serial) fills what a spec leaves out, matched by camera name;
with no specs at all, the task's cameras that name a device (``serial``) are opened. Every camera
opened here runs on its own capture thread (``ThreadedCamera``): reads return the newest frame.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from robot_servers.cameras.base import Camera
from robot_servers.cameras.opencv import OpenCVCamera, OpenCVCameraConfig
from robot_servers.cameras.realsense import RealSenseCamera, RealSenseConfig
from robot_servers.cameras.threaded import ThreadedCamera


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


def open_cameras(specs: Iterable[str], task_cameras: Iterable = (),
                 max_fps: float | None = None) -> dict[str, ThreadedCamera]:
    """Open every camera of ``specs`` on its own capture thread.

    With ``max_fps=None`` a thread reads as fast as its device delivers, so the driver's buffers
    never hold stale frames. Names (and RealSense serials) must be unique; closes those already
    open on failure.
    """
    task_cameras = tuple(task_cameras)
    configs = [with_task_defaults(parse_camera_spec(s), task_cameras) for s in specs]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"cameras: names must be unique, got {names}")
    serials = [c.serial for c in configs if isinstance(c, RealSenseConfig)]
    if len(set(serials)) != len(serials):
        raise ValueError(f"cameras: RealSense serials must be unique, got {serials}")
    cameras: dict[str, ThreadedCamera] = {}
    try:
        for config in configs:
            device = RealSenseCamera(config) if isinstance(config, RealSenseConfig) else OpenCVCamera(config)
            cameras[config.name] = ThreadedCamera(device, max_fps, first_frame_timeout=config.first_frame_timeout)
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


def open_task_cameras(specs: Iterable[str], task_cameras: Iterable = (),
                      max_fps: float | None = None) -> dict[str, ThreadedCamera]:
    """``specs`` (or, when empty, the task's cameras that name a device) with the task's crops and sizes."""
    task_cameras = tuple(task_cameras)
    specs = tuple(specs) or task_camera_specs(task_cameras)
    return open_cameras(specs, task_cameras, max_fps) if specs else {}


def camera_errors(cameras: Mapping[str, Camera]) -> list[str]:
    """The cameras' current faults, for state and health."""
    return [error for error in (camera.error for camera in cameras.values()) if error]
