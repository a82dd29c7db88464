"""The console page in headless Chromium during a short twin run: frames change, a key press is an intervention in
the actor's transitions, "mark success" is a reward, pause holds the pose, closing the page hands back control."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_console_actor import Rig

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's chromium at {CHROMIUM}")]

FRAME_SEQ = "() => Number(document.querySelector('img[data-camera=\"front\"][data-kind=\"policy\"]')?.dataset.seq || -1)"


def test_the_page_watches_steers_and_corrects_a_twin_run(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    rig = Rig(tmp_path)
    try:
        rig.wait_for(lambda: len(rig.received()) >= 5, "the first transitions", timeout=120.0)
        url = rig.wait_for(lambda: [line[len("console: "):] for line in rig.out.value().splitlines()
                                    if line.startswith("console: ")], "the address")[0]
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            first = rig.wait_for(lambda: page.evaluate(FRAME_SEQ) > 0 and page.evaluate(FRAME_SEQ), "a frame")
            rig.wait_for(lambda: page.evaluate(FRAME_SEQ) > first, "a newer frame on the page")
            page.wait_for_selector("#robot dt:text-is('position')", timeout=30_000)  # one arm: no heading rows
            assert page.locator("#robot dt.arm").count() == 0 and page.locator("#robot dt", has_text="position").count() == 1

            # a key held on the page: the actor's transitions carry the human's action and the intervened flag
            page.click("#btn-teleop")
            page.wait_for_selector("#btn-teleop.holding", timeout=30_000)
            before = len(rig.received())
            page.keyboard.down("KeyW")  # +x: the rig's expected human action
            human = rig.wait_for(lambda: [t for t in rig.received()[before:] if t.get("intervened")][:3] or None,
                                 "intervened transitions from the page's key")
            for transition in human:
                np.testing.assert_allclose(transition["actions"], rig.expected_human_action, atol=2e-3)
            page.wait_for_function("document.querySelector('#acting').textContent.startsWith('human')",
                                   timeout=30_000)
            page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
            if os.environ.get("SERL_SAVE_SCREENSHOT") == "1":
                shutil.copy(tmp_path / "console.png", ROOT / "docs" / "figures" / "console.png")
            page.keyboard.up("KeyW")

            # "mark success": the next transition has reward 1 and ends the episode
            before = len(rig.received())
            page.click("#btn-mark_success")
            rig.wait_for(lambda: [t for t in rig.received()[before:] if t["rewards"] == 1.0 and t["dones"]],
                         "the marked transition")

            # pause: nothing is sent and the robot's target holds
            page.click("#btn-pause")
            rig.wait_for(lambda: rig.hub.paused and rig.view().acting == "paused", "the pause")
            rig.views_after(2, acting="paused")
            sent, target = len(rig.received()), np.asarray(rig.robot.state().target_pose, float)
            rig.views_after(10, acting="paused")
            np.testing.assert_allclose(rig.robot.state().target_pose, target, atol=1e-6)
            assert len(rig.received()) == sent
            page.click("#btn-pause")
            rig.wait_for(lambda: len(rig.received()) > sent, "transitions after resume")

            # the page disappears mid-intervention: the policy acts again after the timeout
            page.keyboard.down("KeyW")
            rig.wait_for(lambda: rig.view().acting == "human", "the intervention")
            page.close()
            closed_at = len(rig.received())
            rig.wait_for(lambda: len([t for t in rig.received()[closed_at:] if not t.get("intervened")]) >= 5,
                         "the policy acting after the page closed")
            browser.close()
        assert not errors, errors
    finally:
        rig.close()
    assert rig.error is None, repr(rig.error)
