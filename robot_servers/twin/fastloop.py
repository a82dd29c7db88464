"""The twin's impedance tick loop compiled with numba, calling MuJoCo's C API directly.

A Python loop costs ~20 µs per tick around a ~10 µs ``mj_step``; here the whole loop of
``mj_step1`` → (per arm) ``mj_jacSite`` → impedance law → gripper ramp → ``mj_step2`` runs without the
interpreter, calling MuJoCo's C functions by symbol name (numba external functions, so the machine
code is cached on disk). The arrays passed in are views into MjData: MuJoCo and the law share memory.
``runner()`` is None when numba (sim extra) or the library is missing; the backend then runs the
same steps in Python.
"""

from __future__ import annotations

import glob
import os

import mujoco

from robot_servers.control.impedance import HAVE_NUMBA, filter_target, impedance_kernel


def _load_mujoco_symbols() -> bool:
    """Make libmujoco's symbols visible to numba's linker (the library the bindings already loaded)."""
    if not HAVE_NUMBA or os.environ.get("SERL_TWIN_PYTHON_LOOP", "") == "1":
        return False
    candidates = sorted(glob.glob(os.path.join(os.path.dirname(mujoco.__file__), "libmujoco.so*")))
    if not candidates:
        return False
    try:
        import llvmlite.binding

        llvmlite.binding.load_library_permanently(candidates[0])
    except (OSError, RuntimeError):
        return False
    return True


_AVAILABLE = _load_mujoco_symbols()

if _AVAILABLE:
    import numba
    from numba.core import types

    _ptr = types.uint64
    _mj_step1 = types.ExternalFunction("mj_step1", types.void(_ptr, _ptr))
    _mj_step2 = types.ExternalFunction("mj_step2", types.void(_ptr, _ptr))
    _mj_jac_site = types.ExternalFunction("mj_jacSite", types.void(_ptr, _ptr, _ptr, _ptr, types.int32))

    @numba.njit(cache=True)
    def run_impedance_ticks(n, model_ptr, data_ptr, sites, jacp, jacr, jacp_arm, jacr_arm, tcp_pos, tcp_xmat, qpos,
                            qvel, bias, gravcomp, ctrl, ctrl_all, target, command, alpha, gains, q_ns, tau, force,
                            gripper, gripper_ctrl):
        """``n`` physics ticks with every arm's impedance law tracking its ``target`` (filtered towards its
        ``command`` by ``alpha`` per tick). One entry per arm in each tuple: views into MjData (``qpos`` … ``ctrl``:
        the arm's 7 joints; ``jacp_arm``: its columns of ``jacp``) and into its law; ``gripper`` = [goal,
        reference, max step] widths."""
        arms = len(sites)
        for _ in range(n):
            for a in range(arms):
                filter_target(target[a], command[a], alpha[a])
            _mj_step1(model_ptr, data_ptr)
            for a in range(arms):
                _mj_jac_site(model_ptr, data_ptr, jacp[a].ctypes.data, jacr[a].ctypes.data, sites[a])
                impedance_kernel(jacp_arm[a], jacr_arm[a], tcp_pos[a], tcp_xmat[a], qpos[a], qvel[a], bias[a],
                                 gravcomp[a], target[a], gains[a], q_ns[a], tau[a], force[a], ctrl[a])
                hand = gripper[a]
                diff = hand[0] - hand[1]  # ramp the finger reference at the hand's speed
                if diff != 0.0:
                    hand[1] += min(max(diff, -hand[2]), hand[2])
                    ctrl_all[gripper_ctrl[a]] = 0.5 * hand[1]
            _mj_step2(model_ptr, data_ptr)

    def _flush_if_kernel_changed() -> None:
        """numba checks only this file's timestamp; the law it inlines lives in control/impedance.py."""
        import robot_servers.control.impedance as law

        try:
            index = run_impedance_ticks._cache._cache_file._index_path
            if os.path.exists(index) and os.path.getmtime(index) < os.path.getmtime(law.__file__):
                run_impedance_ticks._cache.flush()
        except (AttributeError, OSError):  # numba internals moved: worst case a stale cache, as numba itself
            pass

    _flush_if_kernel_changed()
else:
    run_impedance_ticks = None


def available() -> bool:
    return run_impedance_ticks is not None


def runner():
    """The compiled loop (compiled on first use, then loaded from numba's disk cache), or None."""
    return run_impedance_ticks
