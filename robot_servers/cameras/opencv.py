"""``OpenCVCamera``: a USB/UVC device index, a stream URL or a video file through ``cv2.VideoCapture``.

``read`` grabs the next frame (video files are paced to their frame rate, like a live camera).
When the device disappears (or a file ends with ``loop=False``) ``read`` raises ``CameraError``
naming the camera and ``error`` reports it until ``reopen()`` or a good frame clears it.
``ThreadedCamera`` runs it on a capture thread for newest-frame reads.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from robot_servers.cameras.base import Camera, CameraError, CropResize, parse_ints
from robot_servers.clock import PeriodicClock


@dataclasses.dataclass(frozen=True)
class OpenCVCameraConfig:
    """``source``: device index ("0"), URL ("rtsp://…") or a video file path."""

    source: str | int
    name: str = "camera"
    width: int | None = None  # requested capture size (devices only)
    height: int | None = None
    fps: float | None = None  # requested device rate; video files are paced to this (or their own) rate
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) on the sensor image
    size: tuple[int, int] | None = (128, 128)  # output (H, W) after crop
    loop: bool = False  # video files: start over at the end instead of reporting end of stream
    first_frame_timeout: float = 5.0  # how long the capture thread's readers wait for the first frame

    def __post_init__(self):
        for field in ("width", "height"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"OpenCVCameraConfig.{field}: expected a positive int, got {value!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"OpenCVCameraConfig.fps: expected a positive number, got {self.fps!r}")
        if self.crop is not None and (len(self.crop) != 4 or min(self.crop) < 0 or min(self.crop[2:]) <= 0):
            raise ValueError(f"OpenCVCameraConfig.crop: expected (top, left, height, width) >= 0, got {self.crop!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise ValueError(f"OpenCVCameraConfig.size: expected (H, W) > 0, got {self.size!r}")

    @classmethod
    def parse(cls, spec: str) -> "OpenCVCameraConfig":
        """``front=/dev/video0,size=128x128,crop=0:80:480:480,fps=30`` (source: index, URL or file; ``loop`` for files)."""
        head, *options = spec.split(",")
        name, sep, source = head.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"OpenCV camera spec {spec!r}: expected name=source[,option=value...]")
        kwargs: dict = {"name": name, "source": source}
        for option in options:
            key, _, value = option.partition("=")
            if key in ("crop", "size"):
                kwargs[key] = parse_ints(value, 4 if key == "crop" else 2, f"OpenCV camera spec {spec!r}: {key}")
            elif key in ("width", "height"):
                kwargs[key] = int(value)
            elif key == "fps":
                kwargs[key] = float(value)
            elif key == "loop" and not value:
                kwargs["loop"] = True
            else:
                raise ValueError(f"OpenCV camera spec {spec!r}: unknown option {option!r}")
        return cls(**kwargs)


def _import_cv2():
    try:
        import cv2
    except ImportError as exc:
        raise ImportError("OpenCVCamera needs OpenCV: pip install 'serl-suite[opencv]'") from exc
    return cv2


class OpenCVCamera(Camera):
    """Frame-by-frame capture from any source OpenCV opens."""

    def __init__(self, config: OpenCVCameraConfig):
        self.config = config
        self.name = config.name
        self._cv2 = _import_cv2()
        self._transform = CropResize(crop=config.crop, size=config.size)
        self._capture = None
        self._clock: PeriodicClock | None = None
        self._error: str | None = None
        self._frames = 0
        self._frame_shape: tuple[int, int, int] | None = None
        self.reopen()

    def _open(self):
        cv2 = self._cv2
        source = self.config.source
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise self._fail(f"cannot open source {self.config.source!r}")
        if self.config.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        if self.config.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        if self.config.fps and isinstance(source, int):
            capture.set(cv2.CAP_PROP_FPS, self.config.fps)
        return capture

    def _is_file(self) -> bool:
        return isinstance(self.config.source, str) and not self.config.source.isdigit() and "://" not in self.config.source

    def _fail(self, message: str) -> CameraError:
        """Record the fault (``error``) and return the exception to raise."""
        self._error = f"camera {self.name!r}: {message}"
        return CameraError(self._error)

    def reopen(self) -> None:
        """(Re)open the source; raises ``CameraError`` when it cannot be opened."""
        self._release()
        self._capture = self._open()
        self._clock = None
        self._error = None

    def _pace(self) -> None:
        """Video files decode faster than real time: deliver their frames at the file's rate."""
        if not self._is_file():
            return
        if self._clock is None:  # first frame after opening: now
            fps = self.config.fps or self._capture.get(self._cv2.CAP_PROP_FPS) or 30.0
            self._clock = PeriodicClock(1.0 / fps)
        else:
            self._clock.wait()

    def read(self) -> tuple[np.ndarray, float]:
        """The next frame (waits for the device) and the time it was grabbed."""
        cv2, capture = self._cv2, self._capture
        if capture is None:
            raise CameraError(self._error or f"camera {self.name!r}: closed")
        self._pace()
        ok, frame = capture.read()
        if not ok and self.config.loop and self._is_file():
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = capture.read()
        timestamp = time.time()
        if not ok or frame is None:
            raise self._fail("stopped delivering frames (disconnected or end of stream)")
        try:
            rgb = self._transform.apply(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        except ValueError as exc:  # crop outside the delivered image
            raise self._fail(str(exc)) from None
        self._error = None
        self._frames += 1
        self._frame_shape = rgb.shape
        return rgb, timestamp

    @property
    def error(self) -> str | None:
        """The last open/read fault, or None since the last good frame."""
        return self._error

    @property
    def frames_captured(self) -> int:
        return self._frames

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.config.size is not None:
            return (*self.config.size, 3)
        if self.config.crop is not None:
            return (self.config.crop[2], self.config.crop[3], 3)
        if self._frame_shape is None:
            self.read()
        return self._frame_shape

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def close(self) -> None:
        self._release()
