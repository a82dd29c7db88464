"""The one transition builder: masks follow termination only, dones any episode end."""

import numpy as np

from serl.data.transition import TRANSITION_KEYS, make_transition


def _step(**flags):
    obs, next_obs = {"state": np.zeros(2, np.float32)}, {"state": np.ones(2, np.float32)}
    return make_transition(obs, [0.5, -0.5], 1.5, next_obs, **flags)


def test_terminated_stops_bootstrapping_and_ends_the_episode():
    t = _step(terminated=True, truncated=False)
    assert t["masks"] == 0.0 and t["dones"] is True


def test_truncated_ends_the_episode_but_keeps_bootstrapping():
    t = _step(terminated=False, truncated=True)
    assert t["masks"] == 1.0 and t["dones"] is True


def test_a_middle_step_neither_ends_nor_stops_bootstrapping():
    t = _step(terminated=False, truncated=False)
    assert t["masks"] == 1.0 and t["dones"] is False
    assert set(t) == set(TRANSITION_KEYS)  # optional fields only when given
    assert t["actions"].dtype == np.float32 and t["rewards"] == np.float32(1.5)
    np.testing.assert_array_equal(t["next_observations"]["state"], [1.0, 1.0])


def test_optional_fields_when_the_source_has_them():
    t = _step(terminated=False, truncated=False, intervened=True, grasp_penalty=-0.02)
    assert t["intervened"] is True and t["grasp_penalty"] == np.float32(-0.02)
