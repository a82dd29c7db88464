"""Facts about the Franka arms (Panda, FR3) shared by the real backends and the twin (no MuJoCo here)."""

from __future__ import annotations

import numpy as np

HOME_Q = (0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4)
"""Franka's "ready" joint configuration (rad): TCP at (0.307, 0, 0.487) pointing down."""
