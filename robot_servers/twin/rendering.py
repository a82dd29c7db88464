"""Offscreen MuJoCo rendering: EGL by default, OSMesa as fallback, a clear error otherwise.

``MUJOCO_GL`` is read once when mujoco is first imported, so ``robot_servers.twin`` sets it to
``egl`` (when unset) before anything imports mujoco.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402


def make_renderer(model: "mujoco.MjModel", height: int, width: int) -> "mujoco.Renderer":
    """A ``mujoco.Renderer``; falls back from EGL to OSMesa when EGL cannot start."""
    try:
        return mujoco.Renderer(model, height, width)
    except Exception as egl_error:  # noqa: BLE001 - any GL start-up failure triggers the fallback
        if os.environ.get("MUJOCO_GL", "").lower() != "egl":
            raise RuntimeError(
                f"offscreen rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {egl_error}. "
                "Install EGL (apt-get install libegl1) or OSMesa (apt-get install libosmesa6) and set "
                "MUJOCO_GL=egl or MUJOCO_GL=osmesa before importing mujoco."
            ) from egl_error
        try:
            from mujoco.osmesa import GLContext as OsmesaContext
            from mujoco.rendering.classic import renderer as classic_renderer

            classic_renderer.gl_context.GLContext = OsmesaContext
            os.environ["MUJOCO_GL"] = "osmesa"
            return mujoco.Renderer(model, height, width)
        except Exception as osmesa_error:  # noqa: BLE001
            raise RuntimeError(
                f"offscreen rendering is unavailable: EGL failed ({egl_error}) and OSMesa failed "
                f"({osmesa_error}). Install libegl1 or libosmesa6 (apt-get) for the twin's cameras."
            ) from osmesa_error


def release_gl_context() -> None:
    """Unbind the calling thread's EGL context, so that another thread may render or close it next.

    An EGL context is current in one thread at a time; ``mujoco.Renderer`` leaves it bound after
    creating or rendering, which breaks renderers shared by threads (robot server, camera threads).
    """
    if os.environ.get("MUJOCO_GL", "").lower() != "egl":
        return
    import mujoco.egl as mj_egl

    if mj_egl.EGL_DISPLAY is not None:
        mj_egl.EGL.eglMakeCurrent(mj_egl.EGL_DISPLAY, mj_egl.EGL.EGL_NO_SURFACE, mj_egl.EGL.EGL_NO_SURFACE,
                                  mj_egl.EGL.EGL_NO_CONTEXT)
