"""Teleop devices: twist shaping, SpaceMouse HID reports, gamepad events, terminal key bytes (through a real pty)."""

from __future__ import annotations

import os
import pty
import struct
import sys
import termios
import time
import types

import numpy as np
import pytest

from serl.devices import DeviceNotFoundError, ScriptedTeleop, TeleopCommand, TeleopConfig, make_teleop, shape_twist
from serl.devices import spacemouse as sm
from serl.devices.gamepad import GamepadEvent, GamepadMapping, GamepadState
from serl.devices.keyboard import KeyboardState, KeyParser, TerminalKeyboard, TerminalKeyReader


# ----------------------------------------------------------------------------- shaping


def test_shape_twist_deadzone_rescale_map_signs_scale():
    cfg = TeleopConfig(deadzone=0.1, axis_map=(1, 0, 2, 3, 4, 5), axis_signs=(-1, 1, 1, 1, 1, -1),
                       translation_scale=0.5, rotation_scale=2.0)
    twist = shape_twist([0.05, 0.55, -1.0, 0.0, 0.3, 0.4], cfg)
    # out x = -raw y: (0.55 - 0.1) / 0.9 = 0.5, * -1 * 0.5
    np.testing.assert_allclose(twist, [-0.25, 0.0, -0.5, 0.0, 2 * (0.2 / 0.9), -2 * (0.3 / 0.9)], atol=1e-12)
    assert np.all(np.abs(shape_twist([5, -5, 0, 0, 0, 0], TeleopConfig())) <= 1.0)
    locked = shape_twist([0, 0, 0, 1, 1, 1], TeleopConfig(lock_rotation=True))
    assert not locked.any()


@pytest.mark.parametrize("kwargs, field", [
    ({"deadzone": 1.0}, "deadzone"),
    ({"axis_map": (0, 0, 1, 2, 3, 4)}, "axis_map"),
    ({"axis_signs": (1, 1, 1, 1, 1, 0.5)}, "axis_signs"),
    ({"translation_scale": float("nan")}, "translation_scale"),
])
def test_teleop_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TeleopConfig(**kwargs)


def test_teleop_command_validation():
    with pytest.raises(ValueError, match="twist"):
        TeleopCommand(np.zeros(5))
    with pytest.raises(ValueError, match="twist"):
        TeleopCommand([0, 0, np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match="gripper"):
        TeleopCommand(np.zeros(6), gripper="squeeze")
    assert not TeleopCommand.idle().active


def test_scripted_teleop_sequence_then_idle():
    teleop = ScriptedTeleop([np.array([0.5, 0, 0, 0, 0, 0]), TeleopCommand.move(np.zeros(6), "close")])
    first, second, third = teleop.read(), teleop.read(), teleop.read()
    assert first.active and first.twist[0] == 0.5
    assert second.active and second.gripper == "close"
    assert not third.active and teleop.exhausted


def test_make_teleop_errors():
    with pytest.raises(ValueError, match="unknown kind"):
        make_teleop("joystick9000")
    with pytest.raises(ValueError, match="needs the env"):
        make_teleop("scripted")


# ----------------------------------------------------------------------------- SpaceMouse


def report(report_id: int, *values: int) -> bytes:
    return bytes([report_id]) + struct.pack(f"<{len(values)}h", *values)


def test_spacemouse_separate_translation_and_rotation_reports():
    parser = sm.SpaceMouseParser(sm.find_model(0x046D, 0xC626))  # SpaceNavigator
    assert parser.feed(report(1, 175, -350, 35))
    np.testing.assert_allclose(parser.axes[:3], [0.5, 1.0, -0.1])  # HID y toward user, z down → z-up frame
    assert not parser.axes[3:].any()
    # bytes of a captured SpaceNavigator rotation report: 02 00 00 e2 ff 00 00 (second axis -30)
    assert parser.feed(bytes([0x02, 0x00, 0x00, 0xE2, 0xFF, 0x00, 0x00]))
    np.testing.assert_allclose(parser.axes[3:], [0.0, 30 / 350, 0.0])
    np.testing.assert_allclose(parser.axes[:3], [0.5, 1.0, -0.1])  # translation kept


def test_spacemouse_combined_report_of_wireless_models():
    parser = sm.SpaceMouseParser(sm.find_model(0x256F, 0xC62E))
    parser.feed(report(1, 0, 0, -350, 700, 0, -175))
    np.testing.assert_allclose(parser.axes, [0.0, 0.0, 1.0, 1.0, 0.0, 0.5])  # 700 clips to 1


def test_spacemouse_buttons_and_gripper():
    two = sm.SpaceMouseParser(sm.find_model(0x256F, 0xC635))  # Compact
    two.feed(bytes([3, 0b01, 0]))
    assert two.buttons == {"left": True, "right": False}
    command = sm.command_from_parser(two, sm.FACING_ROBOT)
    assert command.gripper == "close" and command.active and not command.twist.any()
    two.feed(bytes([3, 0b10, 0]))
    assert sm.command_from_parser(two, sm.FACING_ROBOT).gripper == "open"
    two.feed(bytes([3, 0, 0]))
    assert not sm.command_from_parser(two, sm.FACING_ROBOT).active

    pro = sm.SpaceMouseParser(sm.find_model(0x256F, 0xC632))  # Pro Wireless receiver
    pro.feed(bytes([3, 0x01, 0x10, 0x00, 0x00]))  # MENU (byte 1 bit 0) and button 1 (byte 2 bit 4)
    pressed = {k for k, v in pro.buttons.items() if v}
    assert pressed == {"menu", "1"}
    assert sm.command_from_parser(pro, sm.FACING_ROBOT).gripper == "close"


def test_spacemouse_ignores_unknown_and_short_reports():
    parser = sm.SpaceMouseParser()
    assert not parser.feed(b"")
    assert not parser.feed(bytes([0x17, 100]))  # battery report of wireless models
    assert not parser.feed(bytes([1, 0, 0]))
    assert parser.reports == 0 and not parser.axes.any()


def test_facing_robot_mapping_matches_serl_axes():
    """Push the cap away from you: the arm (facing you) moves towards its -x; right → +y; lift → +z."""
    parser = sm.SpaceMouseParser()
    config = TeleopConfig(deadzone=0.0, axis_map=sm.FACING_ROBOT.axis_map, axis_signs=sm.FACING_ROBOT.axis_signs)
    parser.feed(report(1, 0, -350, 0))  # HID -y = away from the user
    np.testing.assert_allclose(sm.command_from_parser(parser, config).twist, [-1, 0, 0, 0, 0, 0])
    parser.feed(report(1, 350, 0, -350))  # right and up
    np.testing.assert_allclose(sm.command_from_parser(parser, config).twist, [0, 1, 1, 0, 0, 0])


def test_list_spacemice_prefers_multiaxis_interface_and_explains_missing():
    entries = [
        {"vendor_id": 0x256F, "product_id": 0xC635, "path": b"/dev/hidraw3", "usage_page": 12, "usage": 1},
        {"vendor_id": 0x256F, "product_id": 0xC635, "path": b"/dev/hidraw2", "usage_page": 1, "usage": 8},
        {"vendor_id": 0x1234, "product_id": 0x0001, "path": b"/dev/hidraw0", "usage_page": 1, "usage": 6},
    ]
    found = sm.list_spacemice(lambda: entries)
    assert [e["path"] for e in found] == [b"/dev/hidraw2", b"/dev/hidraw3"]
    assert found[0]["model"].name == "SpaceMouse Compact"
    assert "udev" in sm.describe_missing([])
    unknown = [{"vendor_id": 0x256F, "product_id": 0xC6FF, "product_string": "SpaceMouse Future"}]
    assert "256f:c6ff" in sm.describe_missing(unknown)


class FakeHidDevice:
    """The hardware boundary: a HID device that replays recorded reports."""

    def __init__(self, reports, fail_open=False):
        self.reports = list(reports)
        self.fail_open = fail_open
        self.closed = False

    def open_path(self, path):
        if self.fail_open:
            raise OSError("open failed")

    def set_nonblocking(self, flag):
        pass

    def read(self, size, timeout_ms=0):
        if self.reports:
            return list(self.reports.pop(0))
        time.sleep(timeout_ms / 1000)
        return []

    def close(self):
        self.closed = True


def fake_hid(monkeypatch, entries, device):
    module = types.SimpleNamespace(enumerate=lambda: entries, device=lambda: device)
    monkeypatch.setitem(sys.modules, "hid", module)


def test_spacemouse_device_layer_reads_thread_and_goes_stale(monkeypatch):
    entries = [{"vendor_id": 0x256F, "product_id": 0xC62E, "path": b"/dev/hidraw5", "usage_page": 1, "usage": 8}]
    device = FakeHidDevice([report(1, 350, 0, 0, 0, 0, 0), bytes([3, 1, 0])])
    fake_hid(monkeypatch, entries, device)
    mouse = sm.SpaceMouse(TeleopConfig(deadzone=0.0), stale_after_s=0.3)
    try:
        deadline = time.monotonic() + 2
        while mouse.parser.reports < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        command = mouse.read()
        assert command.twist[0] == pytest.approx(1.0) and command.gripper == "close" and command.active
        time.sleep(0.4)  # no motion reports: motion is stale, the button is still held
        command = mouse.read()
        assert not command.twist.any() and command.gripper == "close"
    finally:
        mouse.close()
    assert device.closed


def test_spacemouse_missing_or_forbidden_device_messages(monkeypatch):
    fake_hid(monkeypatch, [], FakeHidDevice([]))
    with pytest.raises(DeviceNotFoundError, match="no SpaceMouse"):
        sm.SpaceMouse()
    entries = [{"vendor_id": 0x046D, "product_id": 0xC626, "path": b"/dev/hidraw1"}]
    fake_hid(monkeypatch, entries, FakeHidDevice([], fail_open=True))
    with pytest.raises(DeviceNotFoundError, match="permissions.*udev"):
        sm.SpaceMouse()


# ----------------------------------------------------------------------------- gamepad

RECORDED_PAD_EVENTS = [
    GamepadEvent("axis", 1, -0.8),  # left stick pushed forward
    GamepadEvent("axis", 0, 0.05),  # inside the deadzone
    GamepadEvent("axis", 3, 0.5),  # right stick right: yaw
    GamepadEvent("hat", 0, (1, 0)),
    GamepadEvent("button_down", 5),  # RB
]


def test_gamepad_state_from_recorded_events():
    state = GamepadState()
    state.handle_all(RECORDED_PAD_EVENTS)
    command = state.command(TeleopConfig(deadzone=0.1))
    np.testing.assert_allclose(command.twist, [(0.8 - 0.1) / 0.9, 0, 0, 1.0, 0, -(0.5 - 0.1) / 0.9])
    assert command.gripper == "close" and command.buttons == {"rb": True} and command.active
    state.handle(GamepadEvent("button_up", 5))
    state.handle_all([GamepadEvent("axis", 1, 0.0), GamepadEvent("axis", 3, 0.0), GamepadEvent("hat", 0, (0, 0))])
    assert not state.command(TeleopConfig(deadzone=0.1)).active
    state.handle(GamepadEvent("button_down", 7))
    idle_button = state.command(TeleopConfig())
    assert idle_button.buttons == {"start": True} and not idle_button.active  # start is for the app, not motion
    with pytest.raises(ValueError, match="kind"):
        state.handle(GamepadEvent("wiggle", 0))
    with pytest.raises(ValueError, match="twist_sources"):
        GamepadMapping(twist_sources=("axis0", "stick", "", "", "", ""))


def test_gamepad_through_pygame_event_queue(monkeypatch):
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    from serl.devices.gamepad import Gamepad

    pad = Gamepad(TeleopConfig(deadzone=0.0), require_device=False)
    try:
        pygame.event.post(pygame.event.Event(pygame.JOYAXISMOTION, joy=0, instance_id=0, axis=4, value=-1.0))
        pygame.event.post(pygame.event.Event(pygame.JOYBUTTONDOWN, joy=0, instance_id=0, button=4))
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_a))  # not a pad event: ignored
        command = pad.read()
        np.testing.assert_allclose(command.twist, [0, 0, 1, 0, 0, 0])  # right stick up → +z
        assert command.gripper == "open"
        pygame.event.post(pygame.event.Event(pygame.JOYBUTTONUP, joy=0, instance_id=0, button=4))
        pygame.event.post(pygame.event.Event(pygame.JOYAXISMOTION, joy=0, instance_id=0, axis=4, value=0.0))
        assert not pad.read().active
    finally:
        pad.close()


# ----------------------------------------------------------------------------- keyboard bytes


@pytest.mark.parametrize("data, keys", [
    (b"w", ["w"]),
    (b"\x1b[A\x1b[B\x1b[C\x1b[D", ["up", "down", "right", "left"]),
    (b"\x1bOA\x1bOD", ["up", "left"]),  # application cursor mode
    (b"\x1b[1;5A", ["ctrl+up"]),
    (b"\x1b[5~\x1b[6~\x1b[3~", ["pageup", "pagedown", "delete"]),
    (b"\x1b[15~", ["f5"]),
    (b"\r \x7f\t", ["enter", "space", "backspace", "tab"]),
    (b"\x03", ["ctrl+c"]),
    (b"\x1bx", ["alt+x"]),
    ("é".encode(), ["é"]),
])
def test_key_parser_sequences(data, keys):
    assert KeyParser().feed(data) == keys


def test_key_parser_split_sequences_and_lone_escape():
    parser = KeyParser()
    assert parser.feed(b"\x1b") == [] and parser.pending
    assert parser.feed(b"[") == []
    assert parser.feed(b"1;2") == []
    assert parser.feed(b"Cq") == ["shift+right", "q"]
    assert parser.feed(b"\x1b") == []
    assert parser.flush() == ["escape"]
    assert parser.feed("é".encode()[:1]) == []  # half a UTF-8 character waits for the rest
    assert parser.feed("é".encode()[1:]) == ["é"]


def test_keyboard_state_hold_time_and_buttons():
    state = KeyboardState(hold_s=0.5)
    state.press("W", 10.0)
    state.press("a", 10.0)
    state.press("enter", 10.0)
    command = state.command(TeleopConfig(deadzone=0.0), now=10.2)
    np.testing.assert_allclose(command.twist, [1, 1, 0, 0, 0, 0])
    assert command.buttons == {"enter": True} and command.active
    assert state.command(TeleopConfig(), now=10.3).buttons == {}  # buttons are reported once
    assert not state.command(TeleopConfig(), now=10.6).active  # released after hold_s
    state.press("c", 11.0)
    assert state.command(TeleopConfig(), now=11.1).gripper == "close"
    state.key_down("s")
    state.key_down("w")  # opposite keys cancel
    assert not state.command(TeleopConfig(), now=20.0).twist.any()


# ----------------------------------------------------------------------------- terminal layer (real pty)


def test_terminal_reader_on_a_real_pty_sets_and_restores_mode():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        reader = TerminalKeyReader(fd=slave)
        try:
            mode = termios.tcgetattr(slave)
            assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO
            assert mode[3] & termios.ISIG  # Ctrl-C still interrupts the recorder
            os.write(master, b"a\x1b[A\r")
            os.write(master, b"\x1b")  # a lone ESC resolves after the escape timeout
            keys, deadline = [], time.monotonic() + 3
            while len(keys) < 4 and time.monotonic() < deadline:
                keys += [event.key for event in reader.drain()]
                time.sleep(0.01)
            assert keys == ["a", "up", "enter", "escape"]
        finally:
            reader.close()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_keyboard_teleop_on_a_pty():
    master, slave = pty.openpty()
    teleop = TerminalKeyboard(fd=slave, hold_s=0.3)
    try:
        assert not teleop.read().active
        os.write(master, b"r")
        deadline = time.monotonic() + 3
        command = teleop.read()
        while not command.active and time.monotonic() < deadline:
            time.sleep(0.01)
            command = teleop.read()
        np.testing.assert_allclose(command.twist, [0, 0, 1, 0, 0, 0])
        time.sleep(0.4)
        assert not teleop.read().active
    finally:
        teleop.close()
        os.close(master)
        os.close(slave)


def test_terminal_reader_refuses_a_non_terminal(tmp_path):
    fd = os.open(tmp_path / "file", os.O_CREAT | os.O_RDWR)
    try:
        with pytest.raises(DeviceNotFoundError, match="not a terminal"):
            TerminalKeyReader(fd=fd)
    finally:
        os.close(fd)


def test_discover_reports_every_kind_without_raising():
    from serl.devices import discover

    report = discover()
    assert set(report) == {"spacemouse", "gamepad", "keyboard"}
    assert all(isinstance(v, str) and v for v in report.values())
