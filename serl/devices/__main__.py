"""``python -m serl.devices [KIND] [--seconds S]``: what each device kind would use here, then live readings.

Use it to check a SpaceMouse, gamepad or keyboard (axis signs, deadzone, buttons) before recording.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from serl.devices import TELEOP_KINDS, DeviceNotFoundError, discover, make_teleop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serl.devices", description=__doc__.split("\n")[0])
    parser.add_argument("kind", nargs="?", choices=[k for k in TELEOP_KINDS if k != "scripted"])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to print live readings")
    parser.add_argument("--hz", type=float, default=10.0)
    args = parser.parse_args(argv)
    for kind, status in discover().items():
        print(f"{kind:>10}: {status}")
    if args.kind is None:
        return 0
    try:
        teleop = make_teleop(args.kind)
    except DeviceNotFoundError as err:
        print(f"cannot open {args.kind}: {err}")
        return 1
    end = time.monotonic() + args.seconds
    with teleop:
        while time.monotonic() < end:
            command = teleop.read()
            pressed = [k for k, v in command.buttons.items() if v]
            print(f"\r{'ACTIVE' if command.active else 'idle  '} twist {np.array2string(command.twist, precision=2, floatmode='fixed')}"
                  f" gripper {str(command.gripper):5} buttons {pressed}   ", end="", flush=True)
            time.sleep(1.0 / args.hz)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
