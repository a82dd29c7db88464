"""``RealSenseCamera``: an Intel RealSense (D4xx) by serial number through pyrealsense2.

The layer is thin on purpose: configuration (parsed and validated without hardware), one
pipeline per serial, a capture thread keeping the newest colour (and optionally aligned depth)
frame. pyrealsense2 is imported only when a camera is opened (extra ``realsense``).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from typing import Any, Mapping

import numpy as np

from robot_servers.cameras.base import Camera, CropResize
from robot_servers.cameras.opencv import CameraError

# Colour modes the D405/D415/D435 accept (width, height): fps
SUPPORTED_RESOLUTIONS = {(424, 240), (480, 270), (640, 360), (640, 480), (848, 480), (1280, 720), (1920, 1080)}
SUPPORTED_FPS = {5, 6, 15, 30, 60, 90}


@dataclasses.dataclass(frozen=True)
class RealSenseConfig:
    """One RealSense camera. ``exposure`` in microseconds; None keeps auto exposure."""

    serial: str
    name: str = "camera"
    width: int = 640
    height: int = 480
    fps: int = 30
    exposure: float | None = None
    depth: bool = False
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) on the sensor image
    size: tuple[int, int] | None = (128, 128)  # output (H, W)
    first_frame_timeout: float = 5.0

    def __post_init__(self):
        if not re.fullmatch(r"[0-9A-Za-z_-]+", str(self.serial)):
            raise ValueError(f"RealSenseConfig.serial: expected the camera's serial number, got {self.serial!r}")
        if (self.width, self.height) not in SUPPORTED_RESOLUTIONS:
            raise ValueError(
                f"RealSenseConfig.width/height: {self.width}x{self.height} is not a RealSense colour mode; "
                f"choose one of {sorted(SUPPORTED_RESOLUTIONS)}")
        if self.fps not in SUPPORTED_FPS:
            raise ValueError(f"RealSenseConfig.fps: expected one of {sorted(SUPPORTED_FPS)}, got {self.fps!r}")
        if self.exposure is not None and not 1 <= self.exposure <= 165000:
            raise ValueError(f"RealSenseConfig.exposure: expected 1..165000 µs or None (auto), got {self.exposure!r}")
        if self.crop is not None:
            top, left, h, w = self.crop
            if min(top, left) < 0 or min(h, w) <= 0 or top + h > self.height or left + w > self.width:
                raise ValueError(f"RealSenseConfig.crop: {self.crop} lies outside the {self.width}x{self.height} image")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ValueError(f"RealSenseConfig.size: expected (H, W) > 0, got {self.size!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RealSenseConfig":
        """Build from a JSON/YAML mapping; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"RealSenseConfig: unknown keys {sorted(unknown)}")
        kwargs = dict(data)
        if "serial" not in kwargs:
            raise ValueError("RealSenseConfig.serial is required")
        kwargs["serial"] = str(kwargs["serial"])
        for key in ("crop", "size"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(int(v) for v in kwargs[key])
        return cls(**kwargs)

    @classmethod
    def parse(cls, spec: str) -> "RealSenseConfig":
        """Parse a command-line spec such as ``wrist=128422270679:640x480@30,exposure=10000,depth,crop=0:80:480:480,size=128x128``."""
        match = re.fullmatch(r"(?:(?P<name>\w+)=)?(?P<serial>[0-9A-Za-z_-]+)(?::(?P<w>\d+)x(?P<h>\d+)(?:@(?P<fps>\d+))?)?(?P<rest>(?:,.*)?)", spec.strip())
        if not match:
            raise ValueError(f"RealSense spec {spec!r}: expected [name=]serial[:WxH[@fps]][,exposure=µs][,depth]")
        kwargs: dict[str, Any] = {"serial": match["serial"]}
        if match["name"]:
            kwargs["name"] = match["name"]
        if match["w"]:
            kwargs["width"], kwargs["height"] = int(match["w"]), int(match["h"])
        if match["fps"]:
            kwargs["fps"] = int(match["fps"])
        for option in filter(None, match["rest"].split(",")):
            key, _, value = option.partition("=")
            if key == "depth" and not value:
                kwargs["depth"] = True
            elif key == "exposure" and value:
                kwargs["exposure"] = float(value)
            elif key in ("crop", "size") and value:
                kwargs[key] = parse_ints(value, 4 if key == "crop" else 2, f"RealSense spec {spec!r}: {key}")
            else:
                raise ValueError(f"RealSense spec {spec!r}: unknown option {option!r}")
        return cls(**kwargs)


def parse_ints(text: str, count: int, field: str) -> tuple[int, ...]:
    """``"0:80:480:480"`` or ``"128x128"`` → ints; ValueError naming ``field`` otherwise."""
    parts = re.split(r"[:x]", text)
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count:
        raise ValueError(f"{field}: expected {count} integers, got {text!r}")
    return values


def _import_rs():
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise ImportError("RealSenseCamera needs pyrealsense2: pip install 'serl-suite[realsense]'") from exc
    return rs


def connected_serials() -> list[str]:
    """Serial numbers of the RealSense devices plugged in now."""
    rs = _import_rs()
    return [device.get_info(rs.camera_info.serial_number) for device in rs.context().query_devices()]


class RealSenseCamera(Camera):
    """Newest-frame capture from one RealSense; ``read_depth`` gives the aligned depth (m) when enabled."""

    def __init__(self, config: RealSenseConfig):
        self.config = config
        self.name = config.name
        rs = self._rs = _import_rs()
        self._transform = CropResize(crop=config.crop, size=config.size)
        self._pipeline = rs.pipeline()
        rs_config = rs.config()
        rs_config.enable_device(config.serial)
        rs_config.enable_stream(rs.stream.color, config.width, config.height, rs.format.rgb8, config.fps)
        if config.depth:
            rs_config.enable_stream(rs.stream.depth, config.width, config.height, rs.format.z16, config.fps)
        try:
            profile = self._pipeline.start(rs_config)
        except RuntimeError as exc:
            raise CameraError(f"camera {self.name!r}: cannot start RealSense {config.serial}: {exc}") from exc
        sensor = profile.get_device().first_color_sensor()
        if config.exposure is None:
            sensor.set_option(rs.option.enable_auto_exposure, 1)
        else:
            sensor.set_option(rs.option.enable_auto_exposure, 0)
            sensor.set_option(rs.option.exposure, float(config.exposure))
        self._align = rs.align(rs.stream.color) if config.depth else None
        self._depth_scale = profile.get_device().first_depth_sensor().get_depth_scale() if config.depth else 0.0
        self._lock = threading.Lock()
        self._has_frame = threading.Event()
        self._stop = threading.Event()
        self._latest: tuple[np.ndarray, float] | None = None
        self._latest_depth: np.ndarray | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"realsense-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frames = self._pipeline.wait_for_frames(int(self.config.first_frame_timeout * 1000))
                if self._align is not None:
                    frames = self._align.process(frames)
                color = np.asanyarray(frames.get_color_frame().get_data())
                image = self._transform.apply(color)
                depth = None
                if self._align is not None:
                    raw = np.asanyarray(frames.get_depth_frame().get_data())
                    depth = CropResize(crop=self.config.crop, size=None).apply(raw[..., None])[..., 0] * self._depth_scale
            except Exception as exc:  # unplugged, USB reset, timeout
                with self._lock:
                    self._error = f"camera {self.name!r} ({self.config.serial}): {exc}"
                self._has_frame.set()
                return
            image.flags.writeable = False
            with self._lock:
                self._latest = (image, frames.get_timestamp() / 1000.0 if frames.get_timestamp() else time.time())
                self._latest_depth = depth
            self._has_frame.set()

    @property
    def error(self) -> str | None:
        with self._lock:
            return self._error

    def read(self) -> tuple[np.ndarray, float]:
        if not self._has_frame.wait(self.config.first_frame_timeout):
            raise CameraError(f"camera {self.name!r}: no frame within {self.config.first_frame_timeout} s")
        with self._lock:
            if self._error is not None:
                raise CameraError(self._error)
            return self._latest

    def read_depth(self) -> np.ndarray:
        """Newest depth image in metres, aligned to colour and cropped (not resized)."""
        if not self.config.depth:
            raise CameraError(f"camera {self.name!r}: depth was not enabled in its config")
        self.read()
        with self._lock:
            return self._latest_depth

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.config.size is not None:
            return (*self.config.size, 3)
        if self.config.crop is not None:
            return (self.config.crop[2], self.config.crop[3], 3)
        return (self.config.height, self.config.width, 3)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        try:
            self._pipeline.stop()
        except RuntimeError:
            pass


def open_realsense_cameras(configs: list[RealSenseConfig]) -> dict[str, RealSenseCamera]:
    """Open several cameras by serial; fails before opening any when a serial is missing or repeated."""
    serials = [c.serial for c in configs]
    if len(set(serials)) != len(serials):
        raise ValueError(f"RealSense serials must be unique, got {serials}")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique, got {names}")
    present = set(connected_serials())
    missing = [s for s in serials if s not in present]
    if missing:
        raise CameraError(f"RealSense serials not connected: {missing}; connected: {sorted(present)}")
    cameras: dict[str, RealSenseCamera] = {}
    try:
        for config in configs:
            cameras[config.name] = RealSenseCamera(config)
    except Exception:
        for camera in cameras.values():
            camera.close()
        raise
    return cameras
