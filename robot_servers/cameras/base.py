"""The ``Camera`` interface (twin renderer, RealSense, OpenCV and ``ThreadedCamera`` implement it)
and what the camera modules share: ``CropResize``, ``CameraError``, ``parse_ints``."""

from __future__ import annotations

import abc
import dataclasses
import re

import numpy as np


class CameraError(RuntimeError):
    """A camera could not be opened or stopped delivering frames."""


def parse_ints(text: str, count: int, field: str) -> tuple[int, ...]:
    """``"0:80:480:480"`` or ``"128x128"`` → ints; ValueError naming ``field`` otherwise."""
    parts = re.split(r"[:x]", text)
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count:
        raise ValueError(f"{field}: expected {count} integers, got {text!r}")
    return values


@dataclasses.dataclass(frozen=True)
class CropResize:
    """Crop (pixels, on the sensor image) then resize to ``size`` (H, W)."""

    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width)
    size: tuple[int, int] | None = (128, 128)

    def apply(self, image: np.ndarray) -> np.ndarray:
        if self.crop is not None:
            top, left, height, width = self.crop
            if top < 0 or left < 0 or top + height > image.shape[0] or left + width > image.shape[1]:
                raise ValueError(f"crop {self.crop} outside image of shape {image.shape[:2]}")
            image = image[top : top + height, left : left + width]
        if self.size is not None and tuple(image.shape[:2]) != tuple(self.size):
            image = resize_nearest_area(image, self.size)
        return np.ascontiguousarray(image)


def resize_nearest_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize with OpenCV's area filter when available, else nearest-neighbour (numpy only)."""
    try:
        import cv2

        return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    except ImportError:
        rows = (np.arange(size[0]) * image.shape[0] / size[0]).astype(int)
        cols = (np.arange(size[1]) * image.shape[1] / size[1]).astype(int)
        return image[rows][:, cols]


class Camera(abc.ABC):
    """A colour camera. Device cameras and renderers produce a frame per ``read`` (waiting for the
    device); ``ThreadedCamera`` puts one on a capture thread and ``read`` returns its newest frame."""

    name: str = "camera"

    @abc.abstractmethod
    def read(self) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 RGB frame after crop/resize, and its capture timestamp (s)."""

    @property
    def error(self) -> str | None:
        """The camera's current fault (naming the camera), or None while frames flow."""
        return None

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int]:
        """Shape of the frames ``read`` returns."""

    def reopen(self) -> None:
        """Re-open the device after a fault (the capture thread calls it before retrying); nothing by default."""

    def close(self) -> None:
        """Stop capture. Idempotent."""
