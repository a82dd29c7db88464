"""``OpenCVCamera``: a USB/UVC device index, a stream URL or a video file through ``cv2.VideoCapture``.

A capture thread keeps only the newest frame, so ``read`` never waits for an exposure. When the
device disappears (or a file ends with ``loop=False``) the thread stops and ``read`` raises
``CameraError`` naming the camera; ``reopen()`` tries again. Nothing crashes the caller's process.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from robot_servers.cameras.base import Camera, CropResize
from robot_servers.clock import PeriodicClock


class CameraError(RuntimeError):
    """A camera could not be opened or stopped delivering frames."""


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
    first_frame_timeout: float = 5.0

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
        from robot_servers.cameras.realsense import parse_ints

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
    """Newest-frame capture from any source OpenCV opens."""

    def __init__(self, config: OpenCVCameraConfig):
        self.config = config
        self.name = config.name
        self._cv2 = _import_cv2()
        self._transform = CropResize(crop=config.crop, size=config.size)
        self._lock = threading.Lock()
        self._has_frame = threading.Event()
        self._stop = threading.Event()
        self._latest: tuple[np.ndarray, float] | None = None
        self._error: str | None = None
        self._frames = 0
        self._thread: threading.Thread | None = None
        self._capture = None
        self.reopen()

    def _open(self):
        cv2 = self._cv2
        source = self.config.source
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise CameraError(f"camera {self.name!r}: cannot open source {self.config.source!r}")
        if self.config.width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        if self.config.height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        if self.config.fps and isinstance(source, int):
            capture.set(cv2.CAP_PROP_FPS, self.config.fps)
        return capture

    def _is_file(self) -> bool:
        return isinstance(self.config.source, str) and not self.config.source.isdigit() and "://" not in self.config.source

    def reopen(self) -> None:
        """(Re)open the source and restart capture; raises ``CameraError`` when it cannot be opened."""
        self._stop_thread()
        self._capture = self._open()
        with self._lock:
            self._error, self._latest = None, None
        self._has_frame.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"opencv-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cv2, capture = self._cv2, self._capture
        # Files decode faster than real time; pace them like a live camera.
        clock = None
        if self._is_file():
            fps = self.config.fps or capture.get(cv2.CAP_PROP_FPS) or 30.0
            clock = PeriodicClock(1.0 / fps)
        while not self._stop.is_set():
            ok, frame = capture.read()
            if not ok and self.config.loop and self._is_file():
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
            timestamp = time.time()
            if not ok or frame is None:
                self._set_error("stopped delivering frames (disconnected or end of stream)")
                return
            try:
                rgb = self._transform.apply(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            except ValueError as exc:  # crop outside the delivered image
                self._set_error(str(exc))
                return
            rgb.flags.writeable = False
            with self._lock:
                self._latest = (rgb, timestamp)
                self._frames += 1
            self._has_frame.set()
            if clock:
                clock.wait(self._stop.wait)

    def _set_error(self, message: str) -> None:
        with self._lock:
            self._error = f"camera {self.name!r}: {message}"
        self._has_frame.set()

    @property
    def error(self) -> str | None:
        """The capture fault, or None while frames flow."""
        with self._lock:
            return self._error

    @property
    def frames_captured(self) -> int:
        with self._lock:
            return self._frames

    def read(self) -> tuple[np.ndarray, float]:
        if not self._has_frame.wait(self.config.first_frame_timeout):
            raise CameraError(f"camera {self.name!r}: no frame within {self.config.first_frame_timeout} s")
        with self._lock:
            if self._error is not None:
                raise CameraError(self._error)
            return self._latest

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.config.size is not None:
            return (*self.config.size, 3)
        if self.config.crop is not None:
            return (self.config.crop[2], self.config.crop[3], 3)
        frame, _ = self.read()
        return frame.shape

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def close(self) -> None:
        self._stop_thread()
