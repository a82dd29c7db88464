"""3Dconnexion SpaceMouse over raw HID (``hidapi``), without the vendor driver.

Report layout (little-endian signed 16-bit values, raw range about ±350):

- report 1: translation x, y, z in bytes 1-6. Newer models (SpaceMouse Wireless, Pro Wireless,
  Enterprise, Universal Receiver) append rotation x, y, z in bytes 7-12 of the same report.
- report 2: rotation x, y, z in bytes 1-6 (older models: SpaceNavigator, SpaceMouse Compact, Pro USB).
- report 3: button bitmask from byte 1 on (bit ``i % 8`` of byte ``1 + i // 8`` is button i).

The parser tells the two layouts apart by report length, so an unknown model still moves.
Raw axes are in the device's HID frame (x right, y toward the user, z down); they are turned into
a z-up frame (x right, y away from the user, z up) before ``TeleopConfig`` maps them to the robot.

Permissions (Linux): the hidraw node is root-only by default. Install a udev rule, then replug::

    # /etc/udev/rules.d/99-spacemouse.rules
    KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0660", GROUP="plugdev", TAG+="uaccess"
    KERNEL=="hidraw*", ATTRS{idVendor}=="046d", ATTRS{idProduct}=="c62[5-9b]", MODE="0660", GROUP="plugdev", TAG+="uaccess"

    sudo udevadm control --reload-rules && sudo udevadm trigger   # and: sudo usermod -aG plugdev $USER

If readings stay at zero, another program holds the device (``spacenavd``, 3DxWare: stop it) or the
wrong HID interface was opened (pass ``path`` from ``list_spacemice()``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Sequence

import numpy as np

from serl.devices.base import DeviceNotFoundError, Teleop, TeleopCommand, TeleopConfig, shape_twist

FULL_SCALE = 350.0
UDEV_HINT = (
    "add a udev rule (see serl/devices/spacemouse.py docstring), e.g. "
    "KERNEL==\"hidraw*\", ATTRS{idVendor}==\"256f\", MODE=\"0660\", GROUP=\"plugdev\", TAG+=\"uaccess\", "
    "then `sudo udevadm control --reload-rules && sudo udevadm trigger` and replug the device"
)

# Operator facing the robot across the table (SERL's mapping): robot x = toward the operator,
# robot y = operator's right, z up; rotations likewise.
FACING_ROBOT = TeleopConfig(axis_map=(1, 0, 2, 4, 3, 5), axis_signs=(-1, 1, 1, -1, 1, 1))


@dataclasses.dataclass(frozen=True)
class SpaceMouseModel:
    name: str
    vendor_id: int
    product_id: int
    buttons: tuple[str, ...] = ("left", "right")  # name of button bit i; "" where unused
    close_button: str = "left"
    open_button: str = "right"


def _pro_buttons() -> tuple[str, ...]:
    names = [""] * 32
    for name, index in {"menu": 0, "fit": 1, "top": 2, "rear": 4, "front": 5, "roll_cw": 8, "1": 12, "2": 13,
                        "3": 14, "4": 15, "esc": 22, "alt": 23, "shift": 24, "ctrl": 25, "rotation": 26}.items():
        names[index] = name
    return tuple(names)


_PRO = _pro_buttons()
MODELS: tuple[SpaceMouseModel, ...] = (
    SpaceMouseModel("SpaceNavigator", 0x046D, 0xC626),
    SpaceMouseModel("SpaceMouse Compact", 0x256F, 0xC635),
    SpaceMouseModel("SpaceMouse Wireless (cable)", 0x256F, 0xC62E),
    SpaceMouseModel("SpaceMouse Wireless (receiver)", 0x256F, 0xC62F),
    SpaceMouseModel("SpaceMouse Wireless", 0x256F, 0xC63A),
    SpaceMouseModel("SpaceMouse Pro", 0x046D, 0xC62B, _PRO, "1", "2"),
    SpaceMouseModel("SpaceMouse Pro Wireless (cable)", 0x256F, 0xC631, _PRO, "1", "2"),
    SpaceMouseModel("SpaceMouse Pro Wireless (receiver)", 0x256F, 0xC632, _PRO, "1", "2"),
    SpaceMouseModel("SpaceMouse Pro Wireless (Bluetooth)", 0x256F, 0xC638, _PRO, "1", "2"),
    SpaceMouseModel("SpaceMouse Enterprise", 0x256F, 0xC633, _PRO, "1", "2"),
    SpaceMouseModel("3Dconnexion Universal Receiver", 0x256F, 0xC652, _PRO, "1", "2"),
)
VENDOR_IDS = (0x046D, 0x256F)


def find_model(vendor_id: int, product_id: int) -> SpaceMouseModel | None:
    for model in MODELS:
        if (model.vendor_id, model.product_id) == (vendor_id, product_id):
            return model
    return None


def _int16(lo: int, hi: int) -> int:
    value = lo | (hi << 8)
    return value - 0x10000 if value & 0x8000 else value


class SpaceMouseParser:
    """Turns raw HID reports into axes (z-up device frame, [-1, 1]) and named buttons."""

    def __init__(self, model: SpaceMouseModel = MODELS[0], full_scale: float = FULL_SCALE):
        self.model = model
        self.full_scale = float(full_scale)
        self.raw = np.zeros(6, dtype=np.int64)  # HID frame counts: tx ty tz rx ry rz
        self.button_bits = 0
        self.last_motion = 0.0
        self.reports = 0

    def feed(self, report: Sequence[int] | bytes, timestamp: float | None = None) -> bool:
        """Apply one report; returns True when it was understood (ids 1, 2, 3)."""
        data = bytes(report)
        if not data:
            return False
        stamp = time.monotonic() if timestamp is None else timestamp
        report_id = data[0]
        if report_id == 1 and len(data) >= 7:
            self.raw[0:3] = [_int16(data[i], data[i + 1]) for i in (1, 3, 5)]
            if len(data) >= 13:
                self.raw[3:6] = [_int16(data[i], data[i + 1]) for i in (7, 9, 11)]
            self.last_motion = stamp
        elif report_id == 2 and len(data) >= 7:
            self.raw[3:6] = [_int16(data[i], data[i + 1]) for i in (1, 3, 5)]
            self.last_motion = stamp
        elif report_id == 3 and len(data) >= 2:
            self.button_bits = int.from_bytes(data[1:], "little")
        else:
            return False
        self.reports += 1
        return True

    @property
    def axes(self) -> np.ndarray:
        """(x, y, z, rx, ry, rz) in the z-up frame (x right, y away from the user, z up), clipped to [-1, 1]."""
        flip = np.array([1.0, -1.0, -1.0, 1.0, -1.0, -1.0])  # 180° about x: HID z-down → z-up
        return np.clip(self.raw * flip / self.full_scale, -1.0, 1.0)

    @property
    def buttons(self) -> dict[str, bool]:
        names = self.model.buttons
        pressed = {name: bool(self.button_bits >> i & 1) for i, name in enumerate(names) if name}
        for i in range(max(self.button_bits.bit_length(), 0)):
            if (i >= len(names) or not names[i]) and self.button_bits >> i & 1:
                pressed[f"button_{i}"] = True
        return pressed

    def zero_motion(self) -> None:
        self.raw[:] = 0


def command_from_parser(parser: SpaceMouseParser, config: TeleopConfig, timestamp: float | None = None) -> TeleopCommand:
    """The teleop command the parser's state means: twist, gripper from the close/open buttons, active flag."""
    twist = shape_twist(parser.axes, config)
    buttons = parser.buttons
    gripper = None
    if buttons.get(parser.model.close_button):
        gripper = "close"
    elif buttons.get(parser.model.open_button):
        gripper = "open"
    active = bool(np.any(twist != 0.0) or any(buttons.values()))
    return TeleopCommand(twist, gripper, buttons, active, time.monotonic() if timestamp is None else timestamp)


def _import_hid():
    try:
        import hid  # hidapi (cython-hidapi)
    except ImportError as err:
        raise DeviceNotFoundError(
            "SpaceMouse support needs hidapi: pip install 'serl-suite[devices]' (or pip install hidapi)"
        ) from err
    if not hasattr(hid, "enumerate") or not hasattr(hid, "device"):
        raise DeviceNotFoundError("the installed 'hid' module is not cython-hidapi; pip uninstall hid && pip install hidapi")
    return hid


def list_spacemice(enumerate_fn=None) -> list[dict[str, Any]]:
    """Known SpaceMouse HID interfaces: dicts with model, path, vendor_id, product_id, usage_page, usage."""
    entries = (enumerate_fn or _import_hid().enumerate)()
    found = []
    for entry in entries:
        model = find_model(entry.get("vendor_id", 0), entry.get("product_id", 0))
        if model is None:
            continue
        found.append({**entry, "model": model})
    # The multi-axis interface (usage page 1, usage 8) first: opening another interface reads zeros.
    found.sort(key=lambda e: (e.get("usage_page"), e.get("usage")) != (1, 8))
    return found


def describe_missing(entries: list[dict[str, Any]]) -> str:
    """Why no SpaceMouse was picked, with what was seen."""
    others = [e for e in entries if e.get("vendor_id") in VENDOR_IDS and find_model(e["vendor_id"], e.get("product_id", 0)) is None]
    message = "no SpaceMouse found among the HID devices"
    if others:
        seen = ", ".join(f"{e['vendor_id']:04x}:{e.get('product_id', 0):04x} {e.get('product_string') or ''}".strip() for e in others)
        message += f"; unsupported 3Dconnexion/Logitech devices seen: {seen} (pass vendor_id/product_id to SpaceMouse)"
    elif not entries:
        message += " (hidapi saw no HID devices at all: none is plugged in, or on Linux no read access to /dev/hidraw*; " + UDEV_HINT + ")"
    return message


class SpaceMouse(Teleop):
    """A SpaceMouse read by a background thread; ``read()`` returns the newest command without blocking.

    Motion older than ``stale_after_s`` (device unplugged, radio dropped) reads as zero.
    """

    def __init__(
        self,
        config: TeleopConfig = FACING_ROBOT,
        *,
        path: bytes | str | None = None,
        vendor_id: int | None = None,
        product_id: int | None = None,
        full_scale: float = FULL_SCALE,
        stale_after_s: float | None = 1.0,
    ):
        hid = _import_hid()
        self.config = config
        self.stale_after_s = stale_after_s
        entries = hid.enumerate()
        candidates = list_spacemice(lambda: entries)
        if vendor_id is not None and product_id is not None:
            model = find_model(vendor_id, product_id) or SpaceMouseModel(f"{vendor_id:04x}:{product_id:04x}", vendor_id, product_id)
            candidates = [{**e, "model": model} for e in entries
                          if (e.get("vendor_id"), e.get("product_id")) == (vendor_id, product_id)]
        if path is not None:
            wanted = path.encode() if isinstance(path, str) else path
            candidates = [e for e in candidates if e.get("path") == wanted] or [
                {"path": wanted, "model": candidates[0]["model"] if candidates else MODELS[0]}
            ]
        if not candidates:
            raise DeviceNotFoundError(describe_missing(entries))
        chosen = candidates[0]
        device = hid.device()
        try:
            device.open_path(chosen["path"])
        except (OSError, IOError) as err:
            raise DeviceNotFoundError(
                f"found {chosen['model'].name} at {chosen['path']!r} but cannot open it ({err}); "
                f"most likely missing permissions: {UDEV_HINT}"
            ) from err
        device.set_nonblocking(False)
        self.model: SpaceMouseModel = chosen["model"]
        self.parser = SpaceMouseParser(self.model, full_scale)
        self._device = device
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="spacemouse", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._device.read(64, 50)  # blocks at most 50 ms so close() is quick
            except (OSError, ValueError) as err:
                self.error = err
                with self._lock:
                    self.parser.zero_motion()
                    self.parser.button_bits = 0
                return
            if data:
                with self._lock:
                    self.parser.feed(data)

    def read(self) -> TeleopCommand:
        if self.error is not None:
            raise DeviceNotFoundError(f"SpaceMouse read failed ({self.error}); was it unplugged?")
        with self._lock:
            now = time.monotonic()
            if self.stale_after_s is not None and now - self.parser.last_motion > self.stale_after_s:
                self.parser.zero_motion()
            return command_from_parser(self.parser, self.config, now)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if self._device is not None:
            self._device.close()
            self._device = None
