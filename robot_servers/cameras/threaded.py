"""Run cameras on capture threads and serve the newest frame of each without waiting.

This is the one place frames are captured in the background: device cameras (RealSense, OpenCV)
and renderers only produce a frame per ``read``. Separate devices get a thread each, so one slow
exposure never delays the others. Cameras that share one renderer or SDK context (the twin's: an
EGL context belongs to one thread at a time) share one thread:
``threaded_cameras(cameras, shared_thread=True)``.

A camera that fails (unplugged, end of stream, driver error) is reported through ``error`` while
the thread keeps serving the others and retries it with exponential backoff (``reopen()`` first
when the camera has one); its first good frame clears the fault.
"""

from __future__ import annotations

import threading
import time
from typing import Mapping

import numpy as np

from robot_servers.cameras.base import Camera
from robot_servers.clock import PeriodicClock


class ThreadedCamera(Camera):
    """A view on a capture thread: ``read`` returns the newest frame (waits only for the first one)."""

    def __init__(self, camera: Camera, max_fps: float | None = 30.0, first_frame_timeout: float = 5.0,
                 _start: bool = True):
        self.camera = camera
        self.name = camera.name
        self.first_frame_timeout = first_frame_timeout
        self._latest: tuple[np.ndarray, float] | None = None
        self._error: BaseException | None = None
        self._frames = 0
        self._faults = 0
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
            self._error = None
        self._has_frame.set()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._faults += 1
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
                message = str(self._error) or repr(self._error)
                return message if repr(self.name) in message else f"camera {self.name!r}: {message}"
        return self.camera.error

    @property
    def frames_captured(self) -> int:
        with self._lock:
            return self._frames

    @property
    def faults(self) -> int:
        """How many times this camera went from delivering frames to failing."""
        with self._lock:
            return self._faults

    @property
    def shape(self) -> tuple[int, int, int]:
        with self._lock:
            if self._latest is not None:  # known without touching the device from this thread
                return self._latest[0].shape
        return self.camera.shape

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        self.camera.close()


class _CaptureLoop:
    """One thread reading its cameras in turn, paced to ``max_fps`` (None: as fast as they deliver).

    A failing camera is retried after ``retry_min`` s, doubling up to ``retry_max`` s, while the
    others keep their rate.
    """

    def __init__(self, views: list[ThreadedCamera], max_fps: float | None, retry_min: float = 0.1,
                 retry_max: float = 5.0):
        if max_fps is not None and not max_fps > 0:
            raise ValueError(f"max_fps must be positive or None, got {max_fps}")
        if not 0 < retry_min <= retry_max:
            raise ValueError(f"retry delays must satisfy 0 < retry_min <= retry_max, got {retry_min}, {retry_max}")
        self.views = views
        self.period = 0.0 if max_fps is None else 1.0 / max_fps
        self.retry_min, self.retry_max = retry_min, retry_max
        self._stop = threading.Event()
        names = ",".join(view.name for view in views)
        self._thread = threading.Thread(target=self._run, name=f"camera-{names}", daemon=True)
        for view in views:
            view._loop = self

    def start(self) -> None:
        self._thread.start()

    def _capture(self, view: ThreadedCamera, retry: dict) -> None:
        """One read of one camera; on failure schedule its retry (reopen first where it can)."""
        now = time.monotonic()
        pending = retry.get(view.name)
        if pending is not None and now < pending[0]:
            return
        try:
            if pending is not None:
                view.camera.reopen()
            frame, timestamp = view.camera.read()
        except Exception as exc:  # reported to readers and health; the loop goes on
            view._fail(exc)
            delay = self.retry_min if pending is None else min(pending[1] * 2, self.retry_max)
            retry[view.name] = (time.monotonic() + delay, delay)
            return
        retry.pop(view.name, None)
        view._publish(frame, timestamp)

    def _run(self) -> None:
        clock = PeriodicClock(self.period) if self.period else None
        retry: dict[str, tuple[float, float]] = {}  # camera name -> (next attempt, current backoff)
        while not self._stop.is_set():
            for view in self.views:
                self._capture(view, retry)
            if retry and len(retry) == len(self.views):  # all failing: sleep until the next retry
                self._stop.wait(max(0.0, min(at for at, _ in retry.values()) - time.monotonic()))
                if clock:
                    clock.restart()
            elif clock:
                clock.wait(self._stop.wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)


def threaded_cameras(cameras: Mapping[str, Camera], max_fps: float | None = 30.0,
                     shared_thread: bool = False) -> dict[str, ThreadedCamera]:
    """Wrap every camera; one thread each, or one for all when they share a render/SDK context.

    Cameras already on a capture thread (``ThreadedCamera``) are kept as they are.
    """
    views = {name: camera for name, camera in cameras.items() if isinstance(camera, ThreadedCamera)}
    unthreaded = {name: camera for name, camera in cameras.items() if name not in views}
    if shared_thread:
        shared = {name: ThreadedCamera(camera, _start=False) for name, camera in unthreaded.items()}
        if shared:
            _CaptureLoop(list(shared.values()), max_fps).start()
        views.update(shared)
    else:
        views.update({name: ThreadedCamera(camera, max_fps) for name, camera in unthreaded.items()})
    return {name: views[name] for name in cameras}
