"""MuJoCo Franka twin: models (Panda, FR3, Franka hand, scenes), 1 kHz impedance physics, cameras.

The backend lives in ``robot_servers.backends.twin``. Offscreen rendering defaults to EGL; the
variable must be set before mujoco is first imported, hence here.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
