"""Run cameras on capture threads and serve the newest frame of each without waiting.

Separate devices (RealSense, OpenCV) get a thread each, so one slow exposure never delays the
others. Cameras that share one renderer or SDK context (the twin's: an EGL context belongs to one
thread at a time) share one thread: ``threaded_cameras(cameras, shared_thread=True)``.
"""

from __future__ import annotations

import threading
import time
from typing import Mapping

import numpy as np

from robot_servers.cameras.base import Camera


class ThreadedCamera(Camera):
    """A view on a capture thread: ``read`` returns the newest frame (waits only for the first one)."""

    def __init__(self, camera: Camera, max_fps: float | None = 30.0, first_frame_timeout: float = 5.0,
                 _start: bool = True):
        self.camera = camera
        self.name = getattr(camera, "name", "camera")
        self.first_frame_timeout = first_frame_timeout
        self._latest: tuple[np.ndarray, float] | None = None
        self._error: BaseException | None = None
        self._frames = 0
        self._lock = threading.Lock()
        self._has_frame = threading.Event()
        self._loop: _CaptureLoop | None = None
        if _start:
            _CaptureLoop([self], max_fps).start()

    def _publish(self, frame: np.ndarray, timestamp: float) -> None:
        frame.flags.writeable = False  # shared with readers without a copy
        with self._lock:
            self._latest = (frame, timestamp)
            self._frames += 1
        self._has_frame.set()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._error = exc
        self._has_frame.set()

    def read(self) -> tuple[np.ndarray, float]:
        """Newest (frame, timestamp) without waiting for a new exposure."""
        if not self._has_frame.wait(self.first_frame_timeout):
            raise TimeoutError(f"camera {self.name!r}: no frame within {self.first_frame_timeout} s")
        with self._lock:
            if self._error is not None:
                raise RuntimeError(f"camera {self.name!r} capture failed: {self._error!r}") from self._error
            return self._latest

    @property
    def error(self) -> str | None:
        """Capture fault of this camera (its own, or one the wrapped camera reports), else None."""
        with self._lock:
            if self._error is not None:
                return f"camera {self.name!r}: {self._error!r}"
        return getattr(self.camera, "error", None)

    @property
    def frames_captured(self) -> int:
        with self._lock:
            return self._frames

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.camera.shape

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        self.camera.close()


class _CaptureLoop:
    """One thread reading its cameras in turn, paced to ``max_fps`` (None: as fast as they deliver)."""

    def __init__(self, views: list[ThreadedCamera], max_fps: float | None):
        if max_fps is not None and not max_fps > 0:
            raise ValueError(f"max_fps must be positive or None, got {max_fps}")
        self.views = views
        self.period = 0.0 if max_fps is None else 1.0 / max_fps
        self._stop = threading.Event()
        names = ",".join(view.name for view in views)
        self._thread = threading.Thread(target=self._run, name=f"camera-{names}", daemon=True)
        for view in views:
            view._loop = self

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            for view in self.views:
                try:
                    frame, timestamp = view.camera.read()
                except Exception as exc:  # surfaced to readers of that camera
                    view._fail(exc)
                    return
                view._publish(frame, timestamp)
            if self.period:
                next_tick += self.period
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_tick = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)


def threaded_cameras(cameras: Mapping[str, Camera], max_fps: float | None = 30.0,
                     shared_thread: bool = False) -> dict[str, ThreadedCamera]:
    """Wrap every camera; one thread each, or one for all when they share a render/SDK context."""
    if not shared_thread:
        return {name: ThreadedCamera(camera, max_fps) for name, camera in cameras.items()}
    views = {name: ThreadedCamera(camera, _start=False) for name, camera in cameras.items()}
    if views:
        _CaptureLoop(list(views.values()), max_fps).start()
    return views
