"""OpenCV camera on a generated video file; RealSense configuration parsing (no hardware here)."""

from __future__ import annotations

import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from robot_servers.cameras.opencv import CameraError, OpenCVCamera, OpenCVCameraConfig  # noqa: E402
from robot_servers.cameras.realsense import RealSenseCamera, RealSenseConfig, open_realsense_cameras  # noqa: E402


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
    camera = OpenCVCamera(config)
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


def test_end_of_stream_is_reported_not_raised_in_thread_and_reopen_recovers(tmp_path):
    path = write_video(tmp_path / "short.avi", frames=3, fps=100.0)
    camera = OpenCVCamera(OpenCVCameraConfig(source=path, name="wrist"))
    try:
        deadline = time.monotonic() + 5
        while camera.error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert camera.error is not None and "wrist" in camera.error
        with pytest.raises(CameraError, match="wrist"):
            camera.read()
        assert camera.frames_captured == 3
        camera.reopen()
        frame, _ = camera.read()
        assert frame.shape == (128, 128, 3)
    finally:
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
    with pytest.raises(ValueError, match="unique"):
        open_realsense_cameras([RealSenseConfig(serial="1", name="a"), RealSenseConfig(serial="1", name="b")])


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
        frame, _ = cameras["front"].read()
        assert frame.shape == (32, 48, 3) and frame[..., 0].mean() > 200  # task crop (red half) and size applied
        assert wait_until(lambda: camera_errors(cameras) != [], 5.0)
        assert "front" in camera_errors(cameras)[0]
    finally:
        for camera in cameras.values():
            camera.close()
    with pytest.raises(ValueError, match="unique"):
        open_cameras([f"opencv:a={path}", f"opencv:a={path}"])


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()
