"""Two arms in one MuJoCo world: each arm a backend in its own base frame, one clock for both, contact between the
arms in the physics; the guard's hand clearance (hand-computed distances, a stream that drives the hands into each
other); the PandaHandover task, its scripted expert and reward; two-arm episode files; two arms served by one
process over HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("robot_servers.backends.twin")  # sets MUJOCO_GL before mujoco loads

from robot_servers.backends.twin import TwinConfig, bimanual_twin  # noqa: E402
from robot_servers.control.pose import DOWN_QUAT, compose_pose, relative_pose  # noqa: E402
from robot_servers.control.safety import HandClearance, hands_gap, segment_distance  # noqa: E402
from robot_servers.guard import ArmPair, CommandRejected, GuardConfig, SafetyStopActive  # noqa: E402
from robot_servers.twin import models  # noqa: E402
from serl.envs.robot_client import LocalRobot  # noqa: E402


@contextlib.contextmanager
def served_handover(**config):
    """PandaHandover's two arms served by one process (``build_pair``), each on a loopback port: (arms, urls)."""
    from robot_servers.serve import ServeConfig, ServerThread, build_pair
    from serl.cli.serve import served_task

    arms = build_pair(ServeConfig(**config), served_task("PandaHandover"))
    servers = [ServerThread(arm.app).start() for arm in arms]
    try:
        yield arms, [server.url for server in servers]
    finally:
        for server in servers:
            server.stop()
        for arm in arms:
            arm.close()


def _same_pose(a, b, atol: float = 1e-9) -> bool:
    """Same position and rotation (q and −q are one rotation)."""
    return bool(np.allclose(a[:3], b[:3], atol=atol) and abs(np.dot(a[3:], b[3:])) > 1 - atol)


def test_segment_distance_against_hand_computed_cases():
    o, x = np.zeros(3), np.array([1.0, 0, 0])
    assert segment_distance(o, x, np.array([0.5, 1, 0]), np.array([0.5, 2, 0])) == pytest.approx(1.0)  # T shape
    assert segment_distance(o, x, np.array([2.0, 0, 0]), np.array([3.0, 0, 0])) == pytest.approx(1.0)  # collinear
    assert segment_distance(o, x, np.array([0, 0.3, 0.4]), np.array([1, 0.3, 0.4])) == pytest.approx(0.5)  # parallel
    assert segment_distance(o, x, np.array([0.5, -1, 0]), np.array([0.5, 1, 0])) == pytest.approx(0.0)  # crossing
    assert segment_distance(o, x, np.array([-1.0, 1, 1]), np.array([-1.0, 1, 1.5])) == pytest.approx(np.sqrt(3))


def test_hands_and_wrists_side_by_side_and_end_to_end():
    down = np.array([0.5, 0.0, 0.2, *DOWN_QUAT])  # fingers along y: the blade spans y ± 0.105
    beside = down + [0.14, 0, 0, 0, 0, 0, 0]  # parallel: 14 cm between the tool axes
    assert hands_gap(down, beside) == pytest.approx(0.14 - 2 * 0.045)  # the wrists (link 7) are the widest part
    end_to_end = down + [0, 0.3, 0, 0, 0, 0, 0]  # collinear blades, 30 cm between the centres
    assert hands_gap(down, end_to_end) == pytest.approx(0.3 - 2 * 0.105 - 2 * 0.02)
    tilted = np.array([0.5, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0])  # same hand 30 cm higher: wrist top to fingertips
    assert hands_gap(down, tilted) == pytest.approx(0.3 - 0.22 - 0.045 - 0.02)
    clearance = HandClearance(0.02)
    assert clearance.violation(beside, beside, [down]) is None
    closer = down + [0.10, 0, 0, 0, 0, 0, 0]
    assert "1.0 cm apart" in clearance.violation(closer, beside, [down])
    # moving away is always allowed, even inside the clearance
    assert clearance.violation(closer, down + [0.095, 0, 0, 0, 0, 0, 0], [down]) is None
    with pytest.raises(ValueError, match="clearance"):
        HandClearance(float("nan"))


def test_each_arm_reports_in_its_own_base_frame_and_one_advance_moves_both():
    left, right = bimanual_twin(TwinConfig(scene="empty"), layout="facing", separation=1.0)
    try:
        assert left.world is right.world
        a, b = left.state(), right.state()
        assert _same_pose(a.tcp_pose, b.tcp_pose)  # both at home, in their own frames
        world_a, world_b = compose_pose(left.base_pose, a.tcp_pose), compose_pose(right.base_pose, b.tcp_pose)
        assert world_a[0] == pytest.approx(-0.5 + 0.3069, abs=1e-3) and world_b[0] == pytest.approx(0.5 - 0.3069, abs=1e-3)
        target = a.tcp_pose + [0.05, 0.02, -0.1, 0, 0, 0, 0]  # forward is +x for the left arm, −x for the right
        left.set_target(target)
        right.set_target(target)
        left.advance(1.5)
        assert right.state().timestamp == pytest.approx(1.5) and left.state().timestamp == pytest.approx(1.5)
        for arm in (left, right):
            np.testing.assert_allclose(arm.state().tcp_pose[:3], target[:3], atol=3e-3)
            assert _same_pose(arm.state().target_pose, target)
        moved = compose_pose(right.base_pose, right.state().tcp_pose)[:3] - world_b[:3]
        np.testing.assert_allclose(moved, [-0.05, -0.02, -0.1], atol=3e-3)
    finally:
        left.close()
        right.close()
    assert left.world._closed


def _drive_hands_together(paired: bool, on_violation: str = "reject"):
    """Both hands 1 cm a step towards each other along the line between them, for 4 s; the most arm-to-arm
    contacts the physics saw, the commands refused, and the hands' final distance."""
    left, right = bimanual_twin(TwinConfig(scene="empty"), layout="side_by_side", separation=0.6)
    pair = ArmPair({"left": left.base_pose, "right": right.base_pose})
    robots = {arm: LocalRobot(backend, {}, GuardConfig(paired=pair.arm(arm) if paired else None,
                                                       on_violation=on_violation))
              for arm, backend in (("left", left), ("right", right))}
    poses = {arm: robot.state().tcp_pose.copy() for arm, robot in robots.items()}
    for pose in poses.values():
        pose[0], pose[2] = 0.45, 0.25
    contacts, refused, held = 0, 0, 0
    for _ in range(40):
        for arm, sign in (("left", -1.0), ("right", 1.0)):
            poses[arm][1] += sign * 0.01
            try:
                _, clipped = robots[arm].guard.set_target(poses[arm])
                held += clipped
            except CommandRejected:
                refused += 1
                poses[arm][1] -= sign * 0.01
        robots["left"].advance(0.1)
        contacts = max(contacts, left.world.arm_contacts())
    world = {arm: compose_pose(b.base_pose, robots[arm].state().tcp_pose) for arm, b in (("left", left), ("right", right))}
    distance = hands_gap(world["left"], world["right"])
    for robot in robots.values():
        robot.close()
    return contacts, refused, held, distance


def test_hands_driven_into_each_other_collide_in_the_physics_without_the_pair():
    contacts, refused, held, _ = _drive_hands_together(paired=False)
    assert contacts > 0 and refused == 0 and held == 0


@pytest.mark.parametrize("on_violation", ["reject", "clip"])
def test_the_guard_refuses_targets_inside_the_clearance_and_the_hands_never_touch(on_violation):
    contacts, refused, held, distance = _drive_hands_together(paired=True, on_violation=on_violation)
    assert contacts == 0
    assert (refused if on_violation == "reject" else held) > 20  # both arms, every step after the limit
    assert HandClearance().clearance - 0.005 <= distance < HandClearance().clearance + 0.02  # held at the limit


def test_handover_expert_succeeds_and_the_reward_needs_the_left_hand_away():
    from serl.devices import make_teleop
    from serl.envs.bimanual import make_bimanual_sim_env
    from serl.envs.intervention import InterventionWrapper

    base = make_bimanual_sim_env("PandaHandover", seed=0)
    env = InterventionWrapper(base, make_teleop("scripted", env=base, noise=0.1, seed=0))
    successes, contacts = 0, 0
    world = base.arms["left"].client.backend.world
    for episode in range(3):
        env.reset(seed=episode)
        for _ in range(base.task.max_episode_steps):
            _, reward, terminated, truncated, info = env.step(np.zeros(8, np.float32))
            contacts = max(contacts, world.arm_contacts())
            if terminated or truncated:
                break
        successes += info["succeed"]
        if info["succeed"]:
            assert reward >= 1.0 and env.teleop.phase == "deliver"
    assert successes >= 2 and contacts == 0
    reward = base.reward_fn
    bar, hands = reward.measure(base)
    assert reward.success(bar, hands)
    assert not reward.success(bar, {**hands, "left": bar + [0.0, 0.0, 0.05]})  # the left still at the bar
    assert not reward.success(bar + [0.0, -0.1, 0.0], {**hands, "left": bar + [0.0, 0.3, 0.0]})  # short of the goal
    env.close()


def test_handover_shaping_gains_at_every_step_of_the_delivery_and_the_release_costs_nothing():
    from serl.envs.bimanual import GRASP_OFFSET, HandoverReward

    reward = HandoverReward(shaping=True)
    goal = np.asarray(models.HANDOVER_GOAL)
    middle = np.array([0.0, 0.0, goal[2]])
    end = np.array([GRASP_OFFSET, 0.0, 0.0])

    def potential(bar, left=None, right=None):
        return reward.shaping_potential(bar, {"left": bar - end if left is None else left,
                                              "right": bar + end if right is None else right})

    start, waiting = np.array([*models.BAR_START, 0.0125]), middle + [0.3, 0.3, 0.0]
    both_hold = potential(middle)
    away = middle - end - [0.05, 0.0, 0.0]
    assert potential(middle, left=away) == pytest.approx(both_hold)  # the right holds: letting go is free
    assert potential(middle, left=away, right=waiting) < potential(middle, right=waiting)  # the right not there
    carried = [potential(middle + s * (goal - middle), left=away) for s in np.linspace(0.0, 1.0, 11)]
    assert np.all(np.diff(carried) > 0.0) and carried[-1] == pytest.approx(1.0)
    lifted = [potential(start + s * (middle - start), right=waiting) for s in np.linspace(0.0, 1.0, 6)]
    assert np.all(np.diff(lifted) > 0.0) and lifted[-1] < both_hold


def test_handover_task_layout_keeps_each_arm_on_its_side():
    from serl.envs.bimanual import PANDA_HANDOVER, to_arm

    for arm, side in (("left", -1.0), ("right", 1.0)):
        box = getattr(PANDA_HANDOVER, arm).safety_box
        start = to_arm(arm, (*models.BAR_START, 0.0125))
        goal = to_arm(arm, models.HANDOVER_GOAL)
        inside = [np.all(np.asarray(box.position_low) <= p) and np.all(p <= np.asarray(box.position_high))
                  for p in (start, goal)]
        assert inside == ([True, False] if side < 0 else [False, True])  # neither arm can do it alone


def test_a_bad_handover_action_moves_neither_arm_and_the_env_goes_on():
    from serl.envs.bimanual import make_bimanual_sim_env

    env = make_bimanual_sim_env("PandaHandover", seed=1)
    env.reset(seed=1)
    before = {arm: e.client.state().target_pose.copy() for arm, e in env.arms.items()}
    for action, match in ((np.zeros(7), r"shape \(8,\)"), (np.zeros(9), r"shape \(8,\)"),
                          ([0, 0, 0, 0, 0, float("nan"), 0, 0], "right arm: action")):
        with pytest.raises(ValueError, match=match):
            env.step(action)
    for arm, arm_env in env.arms.items():
        np.testing.assert_array_equal(arm_env.client.state().target_pose, before[arm])
    start = env.arms["left"].client.state().timestamp
    env.step(np.zeros(8))
    assert env.arms["right"].client.state().timestamp - start == pytest.approx(env.period)  # advanced once
    env.close()


def test_two_arm_episodes_round_trip_through_hdf5(tmp_path):
    from serl.data.episodes import Episode, EpisodeWriter, read_episodes

    steps = 3
    state = {"left/tcp_position": np.ones((steps + 1, 3)), "right/tcp_position": np.zeros((steps + 1, 3)),
             "left/bar_position": np.full((steps + 1, 3), 2.0)}
    episode = Episode({"state": state}, np.zeros((steps, 8)), np.zeros(steps), np.zeros(steps, bool),
                      np.zeros(steps, bool), np.zeros(steps, bool), np.zeros(steps, bool), np.arange(steps + 1.0))
    path = tmp_path / "two_arms.h5"
    EpisodeWriter(path).write(episode)
    (back,) = read_episodes(path)
    assert set(back.observations["state"]) == set(state)
    np.testing.assert_array_equal(back.observations["state"]["left/bar_position"], state["left/bar_position"])
    for bad in ("left/tcp/position", "/tcp", "left/", "left/.."):
        with pytest.raises(ValueError, match="invalid entry name"):
            dataclasses.replace(episode, observations={"state": {bad: np.zeros((steps + 1, 1))}}).validate()


@pytest.mark.realtime_twin
def test_two_arms_served_by_one_process_keep_their_hands_apart_over_http():
    from serl.envs.http_client import HttpRobotClient

    with served_handover(on_violation="reject") as (arms, urls):
        left, right = (HttpRobotClient(url) for url in urls)
        assert [a.name for a in arms] == ["left", "right"] and not left.lockstep
        assert left.health()["safety"]["box"]["position_high"][1] == pytest.approx(0.05)
        # the left hand to the middle of the table, where both boxes meet
        bases = {arm.name: arm.backend.base_pose for arm in arms}
        middle = np.array([0.0, 0.0, 0.15, 0.0, 0.0, 0.0, 1.0])
        at = lambda arm, offset: np.r_[relative_pose(middle + [*offset, 0, 0, 0, 0], bases[arm])[:3], DOWN_QUAT]  # noqa: E731
        left_target = at("left", (0.0, 0.0, 0.0))
        deadline = time.monotonic() + 30.0
        while np.linalg.norm(left.state().tcp_pose[:3] - left_target[:3]) > 0.005:  # the watchdog wants commands
            assert time.monotonic() < deadline, "the left hand never reached the middle"
            left.set_target(left_target)
            time.sleep(0.05)
        # the right hand 3 cm beside it: refused, and its arm keeps its target
        before = right.state().target_pose
        with pytest.raises(CommandRejected, match="clearance from the left arm's hand"):
            right.set_target(at("right", (0.03, 0.0, 0.0)))
        assert _same_pose(right.state().target_pose, before)
        right.set_target(at("right", (0.13, 0.0, 0.05)))  # 13 cm away: taken


def test_one_process_serving_both_arms_takes_both_targets_in_one_request():
    from serl.envs.bimanual import PANDA_HANDOVER
    from serl.envs.dual_franka_env import DualFrankaEnv
    from serl.envs.franka_env import FrankaEnv
    from serl.envs.http_client import HttpRobotClient
    from serl.envs.tasks import with_overrides

    # no watchdog: on a loaded machine half a second between these requests would hold the arms at their poses
    with served_handover(watchdog_timeout=None) as (_, urls):
        left, right = (HttpRobotClient(url) for url in urls)
        assert left.pair["id"] == right.pair["id"] and (left.pair["arm"], right.pair["arm"]) == ("left", "right")
        poses = {arm: client.state().target_pose for arm, client in (("left", left), ("right", right))}
        lower = {arm: np.array(getattr(PANDA_HANDOVER, arm).reset_pose) for arm in poses}  # inside each box
        skew = left.set_targets({"left": (lower["left"], None), "right": (lower["right"], 0.03)})
        assert 0.0 <= skew < 0.5
        assert _same_pose(left.state().target_pose, lower["left"]) and _same_pose(right.state().target_pose,
                                                                                    lower["right"])
        # bad input for one arm: neither arm's target changes
        bad = lower["right"].copy()
        bad[0] = np.nan
        with pytest.raises(CommandRejected, match="pose"):
            right.set_targets({"left": (poses["left"], None), "right": (bad, None)})
        with pytest.raises(CommandRejected, match="targets"):
            right.set_targets({"left": (poses["left"], None)})
        assert _same_pose(left.state().target_pose, lower["left"]) and _same_pose(right.state().target_pose,
                                                                                    lower["right"])

        tasks = [with_overrides(task, reset_hooks=(), scene_objects=(), max_episode_steps=10 ** 6)
                 for task in (PANDA_HANDOVER.left, PANDA_HANDOVER.right)]
        env = DualFrankaEnv(*(FrankaEnv(client, task, reward_fn=None) for client, task in zip((left, right), tasks)))
        env.reset(seed=0)
        for _ in range(3):
            env.step(np.zeros(8))
        assert len(env.command_skews) == 3 and max(env.command_skews) < 0.5  # the server's own measure
        env.close()


def test_one_device_drives_one_arm_at_a_time_and_tab_or_a_named_arm_switches_arms():
    from serl.devices.base import ScriptedTeleop, TeleopCommand
    from serl.devices.two_arms import TwoArmTeleop, drive_button
    from serl.envs.bimanual import make_bimanual_sim_env
    from serl.envs.intervention import InterventionWrapper

    up = [1.0, 0, 0.5, 0, 0, 0]
    device = ScriptedTeleop([TeleopCommand.move(up, "close"), TeleopCommand.move(np.zeros(6), tab=True),
                             TeleopCommand.move(up, "open"), TeleopCommand.move(up, **{drive_button("left"): True})])
    base = make_bimanual_sim_env("PandaHandover", seed=2)
    env = InterventionWrapper(base, TwoArmTeleop(base, device))
    env.reset(seed=2)
    executed = []
    for _ in range(5):
        _, _, _, _, info = env.step(np.full(8, 0.5, np.float32))
        executed.append((info["intervened"], np.round(info["executed_action"], 3).tolist()))
    assert executed[0] == (True, [1.0, 0.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0])  # the left arm, the right one still
    assert executed[1] == (True, [0.0] * 8)  # the switch: both still
    assert executed[2] == (True, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 1.0])  # now the right arm
    assert executed[3] == (True, [1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])  # a command naming its arm: the left
    assert executed[4] == (False, [0.5] * 8)  # idle: the policy acts again
    env.close()


def test_a_teleop_action_of_the_wrong_size_is_refused():
    from serl.devices.base import ScriptedTeleop, TeleopCommand
    from serl.envs.bimanual import make_bimanual_sim_env
    from serl.envs.intervention import InterventionWrapper

    base = make_bimanual_sim_env("PandaHandover", seed=0)
    wrong = TeleopCommand(np.zeros(6), active=True, action=np.zeros(7))
    env = InterventionWrapper(base, ScriptedTeleop([wrong]))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"teleop action: expected shape \(8,\)"):
        env.step(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        TeleopCommand(np.zeros(6), action=[0.0, float("nan")])
    env.close()


def test_a_lockstep_two_arm_server_is_one_simulation_advanced_once_per_step():
    from serl.envs.bimanual import PANDA_HANDOVER
    from serl.envs.dual_franka_env import DualFrankaEnv
    from serl.envs.franka_env import FrankaEnv
    from serl.envs.http_client import HttpRobotClient
    from serl.envs.tasks import with_overrides

    with served_handover(lockstep=True) as (_, urls):
        clients = [HttpRobotClient(url) for url in urls]
        assert clients[0].simulation is not None and clients[0].simulation == clients[1].simulation
        tasks = [with_overrides(task, reset_hooks=(), scene_objects=()) for task in (PANDA_HANDOVER.left,
                                                                                      PANDA_HANDOVER.right)]
        env = DualFrankaEnv(*(FrankaEnv(client, task, reward_fn=None) for client, task in zip(clients, tasks)))
        assert env.one_world
        env.reset(seed=0)
        start = clients[1].state().timestamp
        env.step(np.zeros(8))
        assert clients[1].state().timestamp - start == pytest.approx(env.period)
        env.close()


def test_serving_two_real_arms_asks_where_their_bases_stand():
    from robot_servers.serve import ServeConfig, build_pair

    with pytest.raises(ValueError, match="--arms: two different arm names"):
        build_pair(ServeConfig(arms=("left",)))
    with pytest.raises(ValueError, match="--arm-base: give left=x,y,z,yaw once"):
        build_pair(ServeConfig(backend="ros2", arms=("left", "right")))
    with pytest.raises(ValueError, match="--arm-base right=0,1: expected four numbers"):
        build_pair(ServeConfig(backend="ros2", arms=("left", "right"), arm_base=("left=0,0.3,0,0", "right=0,1")))
    with pytest.raises(ValueError, match="--arm-option 'middle:namespace=x': expected ARM:"):
        build_pair(ServeConfig(backend="ros2", arms=("left", "right"), arm_option=("middle:namespace=x",),
                               arm_base=("left=0,0.3,0,0", "right=0,-0.3,0,0")))
    with pytest.raises(ValueError, match="for real arms; the twin places its arms"):
        build_pair(ServeConfig(arms=("left", "right"), arm_base=("left=0,0.3,0,0", "right=0,-0.3,0,0")))


def test_the_published_kinematics_put_the_tcp_where_the_twin_does():
    from robot_servers.franka import HOME_Q, tcp_pose

    (arm,) = bimanual_twin(TwinConfig(scene="empty"), layout="side_by_side", separation=0.6)[:1]
    rng = np.random.default_rng(0)
    for q in [np.array(HOME_Q)] + [np.array(HOME_Q) + rng.uniform(-0.6, 0.6, 7) for _ in range(5)]:
        arm.reset_robot(q)
        assert _same_pose(tcp_pose(q), arm.state().tcp_pose, atol=1e-6)
    arm.world.release()


def _left_hand_swung_towards_the_right_arm(left, right):
    """The left arm turned at its base joint so that its hand points at the right arm; returns that start q."""
    from robot_servers.franka import HOME_Q, tcp_pose

    starts = [np.array(HOME_Q) + [turn, 0, 0, 0, 0, 0, 0] for turn in (-1.5, 1.5)]
    towards = min(starts, key=lambda q: np.linalg.norm(compose_pose(left.base_pose, tcp_pose(q))[:3]
                                                       - right.base_pose[:3]))
    left.reset_robot(towards)
    return towards


def test_a_joint_reset_whose_path_passes_the_other_hand_is_refused_and_moves_nothing():
    from robot_servers.franka import HOME_Q, tcp_pose

    left, right = bimanual_twin(TwinConfig(scene="empty"), layout="side_by_side", separation=0.6)
    pair = ArmPair({"left": left.base_pose, "right": right.base_pose})
    robots = {arm: LocalRobot(backend, {}, GuardConfig(paired=pair.arm(arm)))
              for arm, backend in (("left", left), ("right", right))}
    start = _left_hand_swung_towards_the_right_arm(left, right)
    # the right hand waits on the left hand's way home, most of the way along it
    on_the_way = compose_pose(left.base_pose, tcp_pose(start + 0.7 * (np.array(HOME_Q) - start)))
    right.reset_robot()
    in_the_way = relative_pose(on_the_way, right.base_pose)
    for _ in range(60):
        robots["right"].guard.set_target(in_the_way)
        robots["right"].advance(0.1)
    assert np.linalg.norm(robots["right"].state().tcp_pose[:3] - in_the_way[:3]) < 0.01
    before = left.state().q.copy()
    with pytest.raises(CommandRejected, match="right arm's hand"):
        robots["left"].guard.joint_reset()
    np.testing.assert_allclose(left.state().q, before, atol=1e-3)

    robots["right"].guard.set_target(tcp_pose(HOME_Q))  # out of the way, back in front of its own base
    for _ in range(60):
        robots["right"].advance(0.1)
    robots["left"].guard.joint_reset()
    np.testing.assert_allclose(left.state().q, HOME_Q, atol=0.02)
    for robot in robots.values():
        robot.close()


@pytest.mark.parametrize("on_violation", ["reject", "clip"])
def test_while_one_arm_moves_in_joint_space_the_other_keeps_clear_of_its_path(on_violation):
    from robot_servers.franka import HOME_Q, tcp_pose

    left, right = bimanual_twin(TwinConfig(scene="empty"), layout="side_by_side", separation=0.6)
    pair = ArmPair({"left": left.base_pose, "right": right.base_pose})
    robots = {arm: LocalRobot(backend, {}, GuardConfig(paired=pair.arm(arm), on_violation=on_violation))
              for arm, backend in (("left", left), ("right", right))}
    start = _left_hand_swung_towards_the_right_arm(left, right)
    right.reset_robot()
    on_the_path = relative_pose(compose_pose(left.base_pose, tcp_pose(start + 0.7 * (np.array(HOME_Q) - start))),
                                right.base_pose)
    pair.claim_joint_path("left", start, HOME_Q)  # as the left arm's joint reset does while it moves
    if on_violation == "reject":
        with pytest.raises(CommandRejected, match="left arm's hand"):
            robots["right"].guard.set_target(on_the_path)
    else:
        sent, held = robots["right"].guard.set_target(on_the_path)
        assert held and not _same_pose(sent, on_the_path, atol=1e-3)
    pair.release_joint_path("left")
    sent, held = robots["right"].guard.set_target(on_the_path)
    assert not held and _same_pose(sent, on_the_path)
    for robot in robots.values():
        robot.close()


def test_the_console_stop_latches_both_arms_and_sends_nothing_until_recover():
    from serl.console.hub import ConsoleHub
    from serl.envs.bimanual import make_bimanual_sim_env
    from serl.runtime.actor import ActorConsole

    env = make_bimanual_sim_env("PandaHandover", seed=0)
    obs, _ = env.reset(seed=0)
    console = ActorConsole(ConsoleHub(), env, None)

    def published_arms():
        console.publish(obs, "policy", steps=1, episode=1, episode_step=0, episode_return=0.0, success=False)
        return console.hub.latest()[1].arms

    arms = published_arms()
    assert set(arms) == {"left", "right"}
    for name, arm in arms.items():  # each arm as its own env reads it, in its own base frame, with its own box
        np.testing.assert_allclose(arm.tcp_pose, env.arms[name].state.tcp_pose)
        assert arm.safety_box["low"] == list(env.arms[name].task.safety_box.position_low)
        assert arm.guard["safety_stop"] is False and "watchdog" in arm.guard
    console.hub.command("safety_stop")
    assert console.apply_commands(Path("unused.jsonl"), 0, 0) == "" and console.stopped
    assert all(arm.guard["safety_stop"] for arm in published_arms().values())
    for arm in env.arms.values():
        assert any(error.startswith("safety_stop") for error in arm.client.state().errors)
        with pytest.raises(SafetyStopActive):
            arm.client.set_target(arm.client.state().target_pose)
    targets = {name: arm.client.state().target_pose for name, arm in env.arms.items()}
    start = env.arms["right"].client.state().timestamp
    for _ in range(3):
        console.hold()
    assert env.arms["right"].client.state().timestamp > start  # the world went on; nothing was sent
    for name, arm in env.arms.items():
        assert _same_pose(arm.client.state().target_pose, targets[name])
    console.hub.command("recover")
    assert console.apply_commands(Path("unused.jsonl"), 0, 0) == "new episode" and not console.stopped
    env.reset(seed=1)
    env.step(np.zeros(8))  # both arms take commands again
    env.close()


def test_the_console_page_drives_the_arm_it_names():
    from serl.console.hub import ConsoleHub
    from serl.devices.base import TeleopCommand
    from serl.devices.two_arms import drive_button
    from serl.runtime.env_config import EnvConfig
    from serl.runtime.envs import ObservationWrappers, build_env

    hub = ConsoleHub(teleop_timeout_s=60.0)
    env = build_env(EnvConfig(task="PandaHandover"), seed=0, teleop="browser", console=hub,
                    observations=ObservationWrappers(flat=False))
    env.reset(seed=0)
    assert hub.claim_teleop("page")
    executed = []
    for arm in ("right", "left"):
        hub.teleop_input("page", TeleopCommand(np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]), "close",
                                               {drive_button(arm): True}, active=True, timestamp=time.monotonic()))
        _, _, _, _, info = env.step(np.zeros(8, np.float32))
        executed.append((info["intervened"], np.round(info["executed_action"], 3).tolist()))
    assert executed == [(True, [0.0] * 4 + [0.0, 1.0, 0.0, -1.0]), (True, [0.0, 1.0, 0.0, -1.0] + [0.0] * 4)]
    env.close()


def test_each_arm_sees_the_bar_from_its_own_hand():
    from serl.envs.bimanual import make_bimanual_sim_env

    env = make_bimanual_sim_env("PandaHandover", seed=3)
    obs, _ = env.reset(seed=3)
    for _ in range(3):
        obs, *_ = env.step(np.array([0.5, 0.0, -0.5, 0.0, 0.0, 0.5, 0.0, 0.0], np.float32))
    for name, arm in env.arms.items():
        bar, tcp = arm.client.scene()["bar"][:3], arm.client.state().tcp_pose[:3]  # this arm's base frame
        np.testing.assert_allclose(obs["state"][f"{name}/bar_offset"], bar - tcp, atol=1e-5)
    env.close()
