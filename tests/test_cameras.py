"""OpenCV camera on a generated video file, alone and on its capture thread; RealSense configuration
parsing and capture through a stand-in pyrealsense2 (no hardware here)."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from robot_servers.cameras import realsense  # noqa: E402
from robot_servers.cameras.base import CameraError  # noqa: E402
from robot_servers.cameras.opencv import OpenCVCamera, OpenCVCameraConfig  # noqa: E402
from robot_servers.cameras.realsense import RealSenseCamera, RealSenseConfig  # noqa: E402
from robot_servers.cameras.threaded import ThreadedCamera, threaded_cameras  # noqa: E402


def write_video(path, frames: int = 30, size=(240, 320), fps: float = 30.0) -> str:
    """Frame i: left half red with green = i*8, right half blue (BGR on disk)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.zeros((*size, 3), np.uint8)
        frame[:, : size[1] // 2] = (0, i * 8, 255)  # BGR: red, green ramp
        frame[:, size[1] // 2 :] = (255, 0, 0)  # BGR: blue
        writer.write(frame)
    writer.release()
    return str(path)


def test_video_file_frames_are_rgb_cropped_and_resized(tmp_path):
    path = write_video(tmp_path / "clip.avi")
    config = OpenCVCameraConfig(source=path, name="front", crop=(0, 0, 240, 160), size=(64, 48), loop=True)
    camera = ThreadedCamera(OpenCVCamera(config))
    try:
        frame, stamp = camera.read()
        assert frame.shape == (64, 48, 3) == camera.shape and frame.dtype == np.uint8
        # the crop keeps only the left (red) half; BGR→RGB puts red in channel 0
        assert frame[..., 0].mean() > 200 and frame[..., 2].mean() < 30
        assert abs(stamp - time.time()) < 5.0
        time.sleep(0.3)
        later, later_stamp = camera.read()
        assert later_stamp > stamp, "the capture thread keeps delivering newer frames"
        assert not later.flags.writeable
    finally:
        camera.close()


def test_device_camera_read_grabs_the_next_frame_at_the_file_rate(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=10, fps=50.0)
    camera = OpenCVCamera(OpenCVCameraConfig(source=path, size=None))
    try:
        start = time.monotonic()
        greens = [int(round(camera.read()[0][:, :100, 1].mean() / 8)) for _ in range(5)]
        assert greens == [0, 1, 2, 3, 4]  # frame by frame, none skipped
        assert time.monotonic() - start >= 4 / 50.0 - 0.005  # paced like a live camera
        assert camera.frames_captured == 5 and camera.error is None
    finally:
        camera.close()


def test_uncropped_frame_keeps_both_halves(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=5)
    camera = OpenCVCamera(OpenCVCameraConfig(source=path, size=None, loop=True))
    try:
        frame, _ = camera.read()
        assert frame.shape == (240, 320, 3)
        assert frame[:, :150, 0].mean() > 200  # red left
        assert frame[:, 170:, 2].mean() > 200  # blue right
    finally:
        camera.close()


def test_end_of_stream_raises_naming_the_camera_and_reopen_recovers(tmp_path):
    path = write_video(tmp_path / "short.avi", frames=3, fps=100.0)
    camera = OpenCVCamera(OpenCVCameraConfig(source=path, name="wrist"))
    try:
        for _ in range(3):
            camera.read()
        with pytest.raises(CameraError, match="wrist"):
            camera.read()
        assert camera.error is not None and "wrist" in camera.error
        assert camera.frames_captured == 3
        camera.reopen()
        assert camera.error is None
        frame, _ = camera.read()
        assert frame.shape == (128, 128, 3)
    finally:
        camera.close()


def test_end_of_stream_is_reported_not_raised_in_the_capture_thread(tmp_path):
    path = write_video(tmp_path / "short.avi", frames=3, fps=100.0)
    camera = ThreadedCamera(OpenCVCamera(OpenCVCameraConfig(source=path, name="wrist")), max_fps=100)
    try:
        frame, _ = camera.read()
        assert frame.shape == (128, 128, 3)
        assert wait_until(lambda: camera.error is not None, 5.0)
        assert "wrist" in camera.error and camera.faults >= 1
        # the capture thread retries with backoff: reopening the file brings frames back
        assert wait_until(lambda: camera.frames_captured > 3, 5.0)
    finally:
        camera.close()


def test_threaded_cameras_keeps_cameras_already_on_a_capture_thread(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=5)
    threaded = ThreadedCamera(OpenCVCamera(OpenCVCameraConfig(source=path, name="a", loop=True)))
    plain = OpenCVCamera(OpenCVCameraConfig(source=path, name="b", loop=True))
    cameras = threaded_cameras({"a": threaded, "b": plain}, shared_thread=True)
    try:
        assert list(cameras) == ["a", "b"] and cameras["a"] is threaded
        assert isinstance(cameras["b"], ThreadedCamera) and cameras["b"].camera is plain
        assert cameras["b"].read()[0].shape == (128, 128, 3)
    finally:
        for camera in cameras.values():
            camera.close()


def test_missing_source_and_bad_config_raise_clear_errors(tmp_path):
    with pytest.raises(CameraError, match="cannot open"):
        OpenCVCamera(OpenCVCameraConfig(source=str(tmp_path / "nope.avi"), name="x"))
    with pytest.raises(ValueError, match="fps"):
        OpenCVCameraConfig(source=0, fps=-1)
    with pytest.raises(ValueError, match="crop"):
        OpenCVCameraConfig(source=0, crop=(0, 0, -5, 10))


def test_crop_outside_image_is_a_camera_fault(tmp_path):
    path = write_video(tmp_path / "clip.avi", frames=5)
    camera = OpenCVCamera(OpenCVCameraConfig(source=path, crop=(0, 0, 500, 500), loop=True))
    try:
        with pytest.raises(CameraError, match="outside image"):
            camera.read()
        assert "outside image" in camera.error
    finally:
        camera.close()


def test_realsense_spec_and_dict_parsing():
    config = RealSenseConfig.parse("wrist=128422270679:848x480@60,exposure=10500,depth")
    assert config == RealSenseConfig(serial="128422270679", name="wrist", width=848, height=480, fps=60,
                                     exposure=10500.0, depth=True)
    assert RealSenseConfig.parse("0123") == RealSenseConfig(serial="0123")
    from_dict = RealSenseConfig.from_dict({"serial": 127122270572, "name": "side", "crop": [10, 20, 400, 400]})
    assert from_dict.serial == "127122270572" and from_dict.crop == (10, 20, 400, 400)
    assert RealSenseCamera.shape.fget(type("C", (), {"config": from_dict})()) == (128, 128, 3)


@pytest.mark.parametrize("spec, field", [
    ("1234:641x480", "width/height"),
    ("1234:640x480@29", "fps"),
    ("1234,exposure=0", "exposure"),
    ("1234,gain=3", "unknown option"),
    ("bad serial!", "expected"),
])
def test_realsense_bad_specs_name_the_field(spec, field):
    with pytest.raises(ValueError, match=field):
        RealSenseConfig.parse(spec)


def test_realsense_dict_rejects_unknown_keys_and_bad_crop():
    with pytest.raises(ValueError, match="unknown keys"):
        RealSenseConfig.from_dict({"serial": "1", "exposure_us": 5})
    with pytest.raises(ValueError, match="crop"):
        RealSenseConfig.from_dict({"serial": "1", "crop": [400, 0, 200, 100]})
    from robot_servers.cameras.specs import open_cameras

    with pytest.raises(ValueError, match="unique"):
        open_cameras(["realsense:a=1", "realsense:b=1"])


def test_camera_specs_parse_open_and_report_faults(tmp_path):
    from robot_servers.cameras.specs import camera_errors, open_cameras, parse_camera_spec
    from serl.envs.task_config import CameraSpec

    rs = parse_camera_spec("realsense:wrist_1=128422270679:640x480@30,crop=0:80:480:480,size=96x96")
    assert isinstance(rs, RealSenseConfig) and rs.crop == (0, 80, 480, 480) and rs.size == (96, 96)
    with pytest.raises(ValueError, match="unknown kind"):
        parse_camera_spec("kinect:front=0")
    with pytest.raises(ValueError, match="crop"):
        parse_camera_spec("opencv:front=0,crop=1:2:3")
    path = write_video(tmp_path / "short.avi", frames=4, fps=100.0)
    cameras = open_cameras([f"opencv:front={path}"], task_cameras=(CameraSpec("front", size=(32, 48), crop=(0, 0, 240, 160)),))
    try:
        assert isinstance(cameras["front"], ThreadedCamera)  # newest-frame reads for servers and backends
        frame, _ = cameras["front"].read()
        assert frame.shape == (32, 48, 3) and frame[..., 0].mean() > 200  # task crop (red half) and size applied
        errors = wait_until(lambda: camera_errors(cameras), 5.0)  # the file ends: a fault, named
        assert errors != [] and "front" in errors[0]
    finally:
        for camera in cameras.values():
            camera.close()
    with pytest.raises(ValueError, match="unique"):
        open_cameras([f"opencv:a={path}", f"opencv:a={path}"])


def wait_until(predicate, timeout: float):
    """The first truthy value of ``predicate`` within ``timeout`` s, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


class FakePipeline:
    """A RealSense pipeline delivering solid 480x640 frames (stamped in ms) until told to fail."""

    def __init__(self, rs):
        self.rs, self.running, self.frame_count = rs, False, 0

    def start(self, config):
        self.running = True
        self.rs.pipelines.append(self)
        sensor = types.SimpleNamespace(set_option=lambda option, value: None, get_depth_scale=lambda: 0.001)
        device = types.SimpleNamespace(first_color_sensor=lambda: sensor, first_depth_sensor=lambda: sensor)
        return types.SimpleNamespace(get_device=lambda: device)

    def wait_for_frames(self, timeout_ms):
        if self.rs.failing:
            raise RuntimeError(f"Frame didn't arrive within {timeout_ms}")
        self.frame_count += 1
        color = np.full((480, 640, 3), self.frame_count, np.uint8)
        depth = np.full((480, 640), 1500, np.uint16)
        return types.SimpleNamespace(
            get_color_frame=lambda: types.SimpleNamespace(get_data=lambda: color),
            get_depth_frame=lambda: types.SimpleNamespace(get_data=lambda: depth),
            get_timestamp=lambda: 1000.0 * self.frame_count)

    def stop(self):
        self.running = False


def fake_realsense():
    names = types.SimpleNamespace(color="color", depth="depth", rgb8="rgb8", z16="z16",
                                  enable_auto_exposure="auto", exposure="exposure")
    rs = types.SimpleNamespace(stream=names, format=names, option=names, failing=False, pipelines=[])
    rs.pipeline = lambda: FakePipeline(rs)
    rs.config = lambda: types.SimpleNamespace(enable_device=lambda serial: None, enable_stream=lambda *args: None)
    rs.align = lambda stream: types.SimpleNamespace(process=lambda frames: frames)
    return rs


def test_realsense_read_waits_for_the_next_frame_and_reports_faults(monkeypatch):
    rs = fake_realsense()
    monkeypatch.setattr(realsense, "_import_rs", lambda: rs)
    config = RealSenseConfig(serial="1234", name="wrist", depth=True, crop=(0, 0, 240, 320), size=(60, 80))
    camera = RealSenseCamera(config)
    try:
        frame, stamp = camera.read()
        assert frame.shape == (60, 80, 3) == camera.shape and stamp == 1.0 and frame.max() == 1
        assert camera.read()[1] == 2.0  # one frame per read, stamped by the device (ms → s)
        np.testing.assert_allclose(camera.read_depth(), np.full((240, 320), 1.5))
        rs.failing = True
        with pytest.raises(CameraError, match=r"'wrist' \(1234\): Frame didn't arrive"):
            camera.read()
        assert "wrist" in camera.error
        rs.failing = False
        camera.reopen()
        assert camera.error is None and not rs.pipelines[0].running and rs.pipelines[1].running
        assert camera.read()[1] == 1.0
    finally:
        camera.close()
    assert not rs.pipelines[1].running
    with pytest.raises(CameraError, match="closed"):
        camera.read()
