"""``TwinCamera``: a camera of the MuJoCo twin (wrist or front), behind the ``Camera`` interface.

Frames are rendered on demand from the twin's current state (offscreen, EGL/OSMesa), then cropped
and resized with ``CropResize``; the timestamp is the sim time of the rendered state.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from robot_servers.cameras.base import Camera, CropResize

Render = Callable[[str, int, int], tuple[np.ndarray, float]]  # (camera, height, width) -> (frame, sim time)


class TwinCamera(Camera):
    """A camera of the twin: renders the current sim state (``read`` timestamp = sim time)."""

    def __init__(self, name: str, render: Render, config):
        """``config`` is the twin's ``TwinConfig`` (image and render sizes, crops)."""
        self.name = name
        self._render = render
        self._render_hw = tuple(config.render_size or config.image_size)
        self._crop = CropResize(crop=config.crops.get(name), size=tuple(config.image_size))
        self._shape = (*config.image_size, 3)

    def read(self) -> tuple[np.ndarray, float]:
        frame, stamp = self._render(self.name, *self._render_hw)
        return self._crop.apply(frame), stamp

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape
