"""Keyboard teleop: terminal key reading that works over SSH without a display, and pynput with one.

Bindings (default)::

    w / s       +x / -x           up / down arrows     +x / -x
    a / d       +y / -y           left / right arrows  +y / -y
    r / f       +z / -z           page up / page down  +z / -z
    j / l       +roll / -roll     i / k                +pitch / -pitch
    u / o       +yaw / -yaw
    c           close gripper     v                    open gripper

Every other key is reported once in ``TeleopCommand.buttons`` (e.g. ``{"enter": True}``) for the
application: the demo recorder uses enter (success), backspace (discard last), q (quit).

A terminal sends no key-release events, only the key and then auto-repeats while it is held
(after the terminal's initial repeat delay). A terminal key therefore counts as held for
``hold_s`` after its last press or repeat. pynput (when a display exists) sees real press/release.
"""

from __future__ import annotations

import atexit
import codecs
import collections
import contextlib
import dataclasses
import os
import select
import sys
import termios
import threading
import time
from typing import Any, Mapping

import numpy as np

from serl.devices.base import DeviceNotFoundError, Teleop, TeleopCommand, TeleopConfig, shape_twist

DEFAULT_BINDINGS: Mapping[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "up": (0, 1.0), "down": (0, -1.0),
    "a": (1, 1.0), "d": (1, -1.0), "left": (1, 1.0), "right": (1, -1.0),
    "r": (2, 1.0), "f": (2, -1.0), "pageup": (2, 1.0), "pagedown": (2, -1.0),
    "j": (3, 1.0), "l": (3, -1.0),
    "i": (4, 1.0), "k": (4, -1.0),
    "u": (5, 1.0), "o": (5, -1.0),
}
GRIPPER_KEYS = {"c": "close", "v": "open"}

_CSI_FINAL = {"A": "up", "B": "down", "C": "right", "D": "left", "H": "home", "F": "end", "Z": "shift+tab",
              "P": "f1", "Q": "f2", "R": "f3", "S": "f4"}
_CSI_TILDE = {"1": "home", "2": "insert", "3": "delete", "4": "end", "5": "pageup", "6": "pagedown", "7": "home",
              "8": "end", "15": "f5", "17": "f6", "18": "f7", "19": "f8", "20": "f9", "21": "f10", "23": "f11", "24": "f12"}
_MODIFIERS = {2: "shift+", 3: "alt+", 4: "shift+alt+", 5: "ctrl+", 6: "ctrl+shift+", 7: "ctrl+alt+", 8: "ctrl+shift+alt+"}
_CONTROL = {"\r": "enter", "\n": "enter", "\t": "tab", "\x7f": "backspace", "\x08": "backspace", " ": "space", "\x1b": "escape"}


class KeyParser:
    """Bytes from a terminal → key names ("a", "A", "up", "ctrl+up", "enter", "alt+x", "f5", "ctrl+c" …).

    Escape sequences may arrive split across reads; an incomplete one is kept until more bytes come
    or ``flush()`` (called after a short quiet time) turns a lone ESC into "escape".
    """

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> list[str]:
        self._pending += self._decoder.decode(data)
        keys: list[str] = []
        while self._pending:
            key, used = self._parse_one(self._pending)
            if used == 0:
                break  # incomplete escape sequence: wait for more bytes
            self._pending = self._pending[used:]
            if key:
                keys.append(key)
        return keys

    def flush(self) -> list[str]:
        """Resolve what is pending as plain keys (a lone ESC becomes "escape")."""
        pending, self._pending = self._pending, ""
        keys = []
        for i, char in enumerate(pending):
            if char == "\x1b" and i + 1 < len(pending):
                keys.append("alt+" + self._plain(pending[i + 1]))
                return keys + self.feed(pending[i + 2 :].encode())
            keys.append(self._plain(char))
        return keys

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    @staticmethod
    def _plain(char: str) -> str:
        if char in _CONTROL:
            return _CONTROL[char]
        code = ord(char)
        if code < 0x20:
            return "ctrl+" + chr(code + 0x60)
        return char

    def _parse_one(self, text: str) -> tuple[str | None, int]:
        if text[0] != "\x1b":
            return self._plain(text[0]), 1
        if len(text) == 1:
            return None, 0
        second = text[1]
        if second == "[":
            end = 2
            while end < len(text) and ("0" <= text[end] <= "9" or text[end] == ";"):
                end += 1
            if end >= len(text):
                return None, 0
            params, final = text[2:end], text[end]
            fields = params.split(";") if params else []
            modifier = _MODIFIERS.get(int(fields[1]), "") if len(fields) > 1 and fields[1].isdigit() else ""
            if final == "~":
                name = _CSI_TILDE.get(fields[0] if fields else "", f"csi{params}~")
            else:
                name = _CSI_FINAL.get(final, f"csi{params}{final}")
            return modifier + name, end + 1
        if second == "O":  # SS3: arrows in application mode, F1-F4
            if len(text) < 3:
                return None, 0
            return _CSI_FINAL.get(text[2], f"ss3{text[2]}"), 3
        if second == "\x1b":
            return "escape", 1
        return "alt+" + self._plain(second), 2


@dataclasses.dataclass(frozen=True)
class KeyEvent:
    key: str
    timestamp: float


class TerminalKeyReader:
    """Reads keys from a terminal in non-canonical, no-echo mode (signals stay on: Ctrl-C still interrupts).

    ``fd`` defaults to stdin when it is a terminal, else ``/dev/tty``. The terminal's settings are
    restored by ``close()``.
    """

    def __init__(self, fd: int | None = None, escape_timeout_s: float = 0.05):
        self._own_fd = False
        if fd is None:
            if sys.stdin is not None and sys.stdin.isatty():
                fd = sys.stdin.fileno()
            else:
                try:
                    fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
                except OSError as err:
                    raise DeviceNotFoundError(
                        "keyboard teleop needs a terminal: run it in an interactive shell (ssh -t host ...), "
                        "not with stdin redirected"
                    ) from err
                self._own_fd = True
        if not os.isatty(fd):
            raise DeviceNotFoundError(f"keyboard teleop: fd {fd} is not a terminal")
        self.fd = fd
        self.escape_timeout_s = escape_timeout_s
        self.parser = KeyParser()
        self.events: collections.deque[KeyEvent] = collections.deque(maxlen=1024)
        self._saved = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~(termios.ICANON | termios.ECHO)  # lflag: byte at a time, no echo; ISIG kept
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        atexit.register(self.close)  # never leave the user's terminal without echo
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="terminal-keys", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], self.escape_timeout_s)
            except (OSError, ValueError):
                return
            now = time.monotonic()
            if ready:
                try:
                    data = os.read(self.fd, 1024)
                except OSError:
                    return
                if not data:
                    # a read of 0 bytes on a terminal with VMIN=0 means nothing was there (or hangup)
                    continue
                keys = self.parser.feed(data)
            elif self.parser.pending:
                keys = self.parser.flush()
            else:
                continue
            for key in keys:
                self.events.append(KeyEvent(key, now))

    def drain(self) -> list[KeyEvent]:
        """Key events since the last call, oldest first."""
        out = []
        while True:
            try:
                out.append(self.events.popleft())
            except IndexError:
                return out

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        atexit.unregister(self.close)
        self._thread.join(timeout=1.0)
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
        if self._own_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)


class KeyboardState:
    """Held keys (with a hold time for terminals) → twist, gripper, one-shot buttons."""

    def __init__(self, bindings: Mapping[str, tuple[int, float]] = DEFAULT_BINDINGS,
                 gripper_keys: Mapping[str, str] = GRIPPER_KEYS, hold_s: float = 0.5):
        self.bindings = dict(bindings)
        self.gripper_keys = dict(gripper_keys)
        self.hold_s = hold_s
        self.held_until: dict[str, float] = {}
        self.down: set[str] = set()  # keys with real press/release (pynput)
        self.pending_buttons: dict[str, bool] = {}

    def press(self, key: str, timestamp: float) -> None:
        """A key press or terminal auto-repeat."""
        key = key.lower() if len(key) == 1 else key
        if key in self.bindings or key in self.gripper_keys:
            self.held_until[key] = timestamp + self.hold_s
        else:
            self.pending_buttons[key] = True

    def key_down(self, key: str) -> None:
        key = key.lower() if len(key) == 1 else key
        if key in self.bindings or key in self.gripper_keys:
            self.down.add(key)
        else:
            self.pending_buttons[key] = True

    def key_up(self, key: str) -> None:
        self.down.discard(key.lower() if len(key) == 1 else key)

    def held(self, now: float) -> set[str]:
        return {k for k, until in self.held_until.items() if until > now} | self.down

    def command(self, config: TeleopConfig, now: float) -> TeleopCommand:
        held = self.held(now)
        raw = np.zeros(6)
        for key in held:
            if key in self.bindings:
                axis, sign = self.bindings[key]
                raw[axis] += sign
        gripper = None
        for key in held:
            if key in self.gripper_keys:
                gripper = self.gripper_keys[key]
        twist = shape_twist(np.clip(raw, -1.0, 1.0), config)
        buttons, self.pending_buttons = self.pending_buttons, {}
        active = bool(np.any(twist != 0.0) or gripper is not None)
        return TeleopCommand(twist, gripper, buttons, active, now)


class TerminalKeyboard(Teleop):
    """Keyboard teleop from the terminal (works over SSH). See the module docstring for the keys."""

    def __init__(self, config: TeleopConfig = TeleopConfig(deadzone=0.0, translation_scale=1.0, rotation_scale=1.0),
                 *, fd: int | None = None, hold_s: float = 0.5,
                 bindings: Mapping[str, tuple[int, float]] = DEFAULT_BINDINGS,
                 gripper_keys: Mapping[str, str] = GRIPPER_KEYS, clock=time.monotonic):
        self.config = config
        self.reader = TerminalKeyReader(fd)
        self.state = KeyboardState(bindings, gripper_keys, hold_s)
        self._clock = clock

    def read(self) -> TeleopCommand:
        for event in self.reader.drain():
            self.state.press(event.key, event.timestamp)
        return self.state.command(self.config, self._clock())

    def close(self) -> None:
        self.reader.close()


def _pynput_name(key: Any) -> str | None:
    char = getattr(key, "char", None)
    if char:
        return char
    name = getattr(key, "name", None)
    return {"page_up": "pageup", "page_down": "pagedown", "esc": "escape"}.get(name, name)


class PynputKeyboard(Teleop):
    """Keyboard teleop with real key press/release events (needs a display: X11, Wayland with XWayland, macOS)."""

    def __init__(self, config: TeleopConfig = TeleopConfig(deadzone=0.0),
                 *, bindings: Mapping[str, tuple[int, float]] = DEFAULT_BINDINGS,
                 gripper_keys: Mapping[str, str] = GRIPPER_KEYS):
        try:
            from pynput import keyboard
        except Exception as err:  # ImportError, or Xlib failing without a display
            raise DeviceNotFoundError(f"pynput keyboard unavailable ({err}); pip install pynput, or use the terminal keyboard") from err
        self.config = config
        self.state = KeyboardState(bindings, gripper_keys)
        self._lock = threading.Lock()

        def on_press(key):
            name = _pynput_name(key)
            if name:
                with self._lock:
                    self.state.key_down(name)

        def on_release(key):
            name = _pynput_name(key)
            if name:
                with self._lock:
                    self.state.key_up(name)

        self._listener = keyboard.Listener(on_press=on_press, on_release=on_release)
        self._listener.start()

    def read(self) -> TeleopCommand:
        with self._lock:
            return self.state.command(self.config, time.monotonic())

    def close(self) -> None:
        self._listener.stop()


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform == "darwin"


def make_keyboard(config: TeleopConfig | None = None, prefer: str = "auto", **kwargs) -> Teleop:
    """pynput when a display exists (real key-up events), else the terminal reader."""
    if prefer not in ("auto", "terminal", "pynput"):
        raise ValueError(f"prefer: expected 'auto', 'terminal' or 'pynput', got {prefer!r}")
    extra = {} if config is None else {"config": config}
    if prefer == "pynput" or (prefer == "auto" and has_display()):
        try:
            return PynputKeyboard(**extra)
        except DeviceNotFoundError:
            if prefer == "pynput":
                raise
    return TerminalKeyboard(**extra, **kwargs)
