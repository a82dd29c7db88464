"""``key=value`` command-line overrides, shared by the robot server and the ``serl`` commands."""

from __future__ import annotations

import json
from typing import Any, Iterable


def parse_overrides(items: Iterable[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=x", "c=[1, 2]"]`` → ``{"a": 1, "b": "x", "c": (1, 2)}``.

    A value is parsed as JSON when it parses and kept as the string otherwise; JSON lists become
    tuples, as the frozen configs they override hold tuples. ``what`` names the option in errors.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what}: expected key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        parsed[key] = tuple(value) if isinstance(value, list) else value
    return parsed
