"""The twin's impedance tick loop compiled with numba, calling MuJoCo's C API through ctypes.

A Python loop costs ~20 µs per tick around a ~10 µs ``mj_step``; here the whole loop of
``mj_step1`` → ``mj_jacSite`` → impedance law → gripper ramp → ``mj_step2`` runs without the
interpreter. The arrays passed in are views into MjData, so MuJoCo and the law share memory.
``available()`` is False when numba (sim extra) or the library cannot be loaded; the backend then
runs the same steps in Python.
"""

from __future__ import annotations

import ctypes
import glob
import os

import mujoco

from robot_servers.control.impedance import HAVE_NUMBA, impedance_kernel

_run = None


def _load_library():
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(mujoco.__file__), "libmujoco.so*")))
    if not candidates:
        return None
    lib = ctypes.CDLL(candidates[0])  # the same library the bindings loaded: one mujoco in the process
    pointer = ctypes.c_uint64
    for name in ("mj_step1", "mj_step2"):
        getattr(lib, name).argtypes = [pointer, pointer]
        getattr(lib, name).restype = None
    lib.mj_jacSite.argtypes = [pointer, pointer, pointer, pointer, ctypes.c_int]
    lib.mj_jacSite.restype = None
    return lib


def _build():
    import numba

    lib = _load_library()
    if lib is None:
        return None
    step1, step2, jac_site = lib.mj_step1, lib.mj_step2, lib.mj_jacSite

    @numba.njit
    def run_impedance_ticks(n, model_ptr, data_ptr, site, jacp, jacr, tcp_pos, tcp_xmat, qpos, qvel, bias,
                            gravcomp, ctrl, target, gains, q_ns, tau, force, gripper, gripper_ctrl):
        for _ in range(n):
            step1(model_ptr, data_ptr)
            jac_site(model_ptr, data_ptr, jacp.ctypes.data, jacr.ctypes.data, site)
            impedance_kernel(jacp, jacr, tcp_pos, tcp_xmat, qpos, qvel, bias, gravcomp, target, gains, q_ns,
                             tau, force, ctrl)
            diff = gripper[0] - gripper[1]  # goal − reference: ramp at the hand's speed
            if diff != 0.0:
                gripper[1] += min(max(diff, -gripper[2]), gripper[2])
                ctrl[gripper_ctrl] = 0.5 * gripper[1]
            step2(model_ptr, data_ptr)

    return run_impedance_ticks


def available() -> bool:
    return runner() is not None


def runner():
    """The compiled loop, or None without numba (compiled once per process, ~1 s)."""
    global _run
    if _run is None and HAVE_NUMBA and os.environ.get("SERL_TWIN_PYTHON_LOOP", "") != "1":
        try:
            _run = _build()
        except (OSError, AttributeError):
            _run = None
    return _run
