"""The attention explorer in headless Chromium: it starts from file:// with no console error, every control redraws
the maps, the colour bar shows the range of the maps drawn (checked against the arrays) and the right/wrong marks
are shown. The screenshot is kept in $GNR650_TEST_ARTIFACTS (default: test-artifacts/)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from gnr650.summary.explorer import explorer_section
from tests.summary.chromium import ARTIFACTS, CHROMIUM, Chromium
from tests.summary.test_explorer import SMALL, make_jobs

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM, reason="chromium not installed")]

SNAPSHOT_JS = """JSON.stringify({
  ready: document.querySelector("#attention-explorer").dataset.ready === "true",
  maps: [...document.querySelectorAll("#attention-explorer .ae-map canvas")].map((c) => c.toDataURL()),
  max: document.querySelector("#attention-explorer .ae-max")?.textContent,
  min: document.querySelector("#attention-explorer .ae-min")?.textContent,
  exactMax: document.querySelector("#attention-explorer .ae-max")?.title,
  exactMin: document.querySelector("#attention-explorer .ae-min")?.title,
  marks: [...document.querySelectorAll("#attention-explorer .ae-map")].map(
    (t) => t.querySelector(".ae-mark")?.textContent ?? null),
  view: document.querySelector("#attention-explorer .ae-view").textContent,
})"""


def choose(browser: Chromium, control: str, value: int) -> dict:
    browser.evaluate(
        f"(m => {{ m.value = '{value}'; m.dispatchEvent(new Event('change')); }})"
        f"(document.querySelector('#attention-explorer select[name={control}]'))"
    )
    return snapshot(browser)


def snapshot(browser: Chromium) -> dict:
    return json.loads(browser.evaluate(SNAPSHOT_JS))


def check_range(shown: dict, maps: list[np.ndarray], stored: list[np.ndarray] | None = None) -> None:
    """The colour bar's ends are the min and max of the maps drawn: exactly (their tooltips) within half a
    quantisation step of the maps stored (a head mean is drawn from its heads), as shown within the digits shown."""
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    step = max(float(np.ptp(m)) for m in stored or maps) / 255
    assert float(shown["exactMax"]) == pytest.approx(high, abs=step / 2 + 1e-7), (shown["exactMax"], high)
    assert float(shown["exactMin"]) == pytest.approx(low, abs=step / 2 + 1e-7), (shown["exactMin"], low)
    assert float(shown["max"]) == pytest.approx(high, abs=step / 2 + 5e-4, rel=0.05)
    assert float(shown["min"]) == pytest.approx(low, abs=step / 2 + 5e-4, rel=0.05)


def mark(e, image: int) -> str:
    """The mark a job's tile should show for an image, from the labels and predictions in its attention.npz."""
    if e.predictions is None:
        return "? prediction not saved"
    predicted = int(e.predictions[image])
    return "✓ correct" if predicted == e.labels[image] else f"✗ predicted {e.class_names[predicted]}"


def test_explorer_switches_class_layer_job_and_head(tmp_path: Path, browser: Chromium):
    attentions = make_jobs(tmp_path / "multirun", 3, SMALL, without_predictions=(2,))
    page = tmp_path / "explorer.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>'
        f"{explorer_section(attentions)}</body></html>"
    )
    browser.open(page.as_uri())
    deadline = time.monotonic() + 10
    while not (state := snapshot(browser))["ready"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state["ready"] and browser.errors() == []
    assert len(state["maps"]) == 3  # all jobs side by side, the last layer, head mean, the first class
    check_range(state, [e.maps[0, -1] for e in attentions], [h for e in attentions for h in e.heads[0, -1]])
    assert state["marks"] == [mark(e, 0) for e in attentions]

    steps = [("image", 2), ("layer", 0), ("head", 1), ("job", 1), ("layer", -1), ("image", 1)]
    for control, value in steps:
        before, state = state, choose(browser, control, value)
        assert state["maps"] != before["maps"], control
        assert (state["max"], state["min"]) != (before["max"], before["min"]), control
    # now: job 1 alone, the rollout, image 1
    assert len(state["maps"]) == 1 and state["marks"] == [mark(attentions[1], 1)]
    check_range(state, [attentions[1].rollout[1]])
    state = choose(browser, "layer", 1)  # job 1, layer 2, head 2 (the head choice stays)
    check_range(state, [attentions[1].heads[1, 1, 1]])
    state = choose(browser, "head", -1)
    check_range(state, [attentions[1].maps[1, 1]], list(attentions[1].heads[1, 1]))
    assert browser.errors() == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    choose(browser, "job", -1)
    (ARTIFACTS / "explorer_screenshot.png").write_bytes(browser.screenshot())
