"""``RealSenseCamera``: an Intel RealSense (D4xx) by serial number through pyrealsense2.

The layer is thin on purpose: configuration (parsed and validated without hardware), one
pipeline per serial, ``read`` waiting for its next colour (and optionally aligned depth) frame;
``ThreadedCamera`` runs it on a capture thread. pyrealsense2 is imported only when a camera is
opened (extra ``realsense``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Mapping

import numpy as np

from robot_servers.cameras.base import Camera, CameraError, CropResize, parse_ints

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
    first_frame_timeout: float = 5.0  # longest wait for a frame before ``read`` reports a fault

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
    """Frame-by-frame capture from one RealSense; ``read_depth`` gives the aligned depth (m) when enabled."""

    def __init__(self, config: RealSenseConfig):
        self.config = config
        self.name = config.name
        self._rs = _import_rs()
        self._transform = CropResize(crop=config.crop, size=config.size)
        self._depth_crop = CropResize(crop=config.crop, size=None)
        self._pipeline = None
        self._align = None
        self._depth_scale = 0.0
        self._latest_depth: np.ndarray | None = None
        self._error: str | None = None
        self.reopen()

    def reopen(self) -> None:
        """(Re)start the pipeline; raises ``CameraError`` when the camera cannot be started."""
        self.close()
        rs, config = self._rs, self.config
        pipeline = rs.pipeline()
        rs_config = rs.config()
        rs_config.enable_device(config.serial)
        rs_config.enable_stream(rs.stream.color, config.width, config.height, rs.format.rgb8, config.fps)
        if config.depth:
            rs_config.enable_stream(rs.stream.depth, config.width, config.height, rs.format.z16, config.fps)
        try:
            profile = pipeline.start(rs_config)
        except RuntimeError as exc:
            raise self._fail(f"camera {self.name!r}: cannot start RealSense {config.serial}: {exc}") from exc
        self._pipeline = pipeline  # from here on ``close`` stops it
        sensor = profile.get_device().first_color_sensor()
        if config.exposure is None:
            sensor.set_option(rs.option.enable_auto_exposure, 1)
        else:
            sensor.set_option(rs.option.enable_auto_exposure, 0)
            sensor.set_option(rs.option.exposure, float(config.exposure))
        self._align = rs.align(rs.stream.color) if config.depth else None
        self._depth_scale = profile.get_device().first_depth_sensor().get_depth_scale() if config.depth else 0.0
        self._latest_depth = None
        self._error = None

    def _fail(self, message: str) -> CameraError:
        """Record the fault (``error``) and return the exception to raise."""
        self._error = message
        return CameraError(message)

    def read(self) -> tuple[np.ndarray, float]:
        """The next colour frame (waits up to ``first_frame_timeout``) and its capture time."""
        if self._pipeline is None:
            raise CameraError(self._error or f"camera {self.name!r}: closed")
        try:
            frames = self._pipeline.wait_for_frames(int(self.config.first_frame_timeout * 1000))
            if self._align is not None:
                frames = self._align.process(frames)
            image = self._transform.apply(np.asanyarray(frames.get_color_frame().get_data()))
            depth = None
            if self._align is not None:
                raw = np.asanyarray(frames.get_depth_frame().get_data())
                depth = self._depth_crop.apply(raw[..., None])[..., 0] * self._depth_scale
        except Exception as exc:  # unplugged, USB reset, timeout
            raise self._fail(f"camera {self.name!r} ({self.config.serial}): {exc}") from exc
        self._latest_depth = depth
        self._error = None
        stamp = frames.get_timestamp()
        return image, stamp / 1000.0 if stamp else time.time()

    @property
    def error(self) -> str | None:
        """The last start/read fault, or None since the last good frame."""
        return self._error

    def read_depth(self) -> np.ndarray:
        """Depth (m) of the frames the last ``read`` returned, aligned to colour and cropped (not resized)."""
        if not self.config.depth:
            raise CameraError(f"camera {self.name!r}: depth was not enabled in its config")
        if self._latest_depth is None:
            self.read()
        return self._latest_depth

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.config.size is not None:
            return (*self.config.size, 3)
        if self.config.crop is not None:
            return (self.config.crop[2], self.config.crop[3], 3)
        return (self.config.height, self.config.width, 3)

    def close(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        try:
            pipeline.stop()
        except RuntimeError:
            pass
