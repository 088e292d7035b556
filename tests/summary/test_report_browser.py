"""report.html in a real headless browser: it loads from file:// with no console error, every image decodes, every
relative link resolves and every table-of-contents anchor exists.

Chromium is driven over the DevTools protocol on a pipe (tests/summary/chromium.py).
The screenshot and the page are kept as artefacts in $GNR650_TEST_ARTIFACTS (default: test-artifacts/).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gnr650.summary import write_summary
from tests.helpers import make_cfg
from tests.summary.chromium import ARTIFACTS, CHROMIUM, Chromium
from tests.summary.jobs import make_job

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM, reason="chromium not installed")]

LINKS_JS = "JSON.stringify([...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')))"
# Table-of-contents entries whose target element is missing from the page.
TOC_JS = (
    "JSON.stringify([...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'))"
    ".filter(h => !document.getElementById(h.slice(1))))"
)


def check_page(browser: Chromium, report: Path, name: str) -> list[dict]:
    """Open ``report`` from disk: no console error, every image decoded, every relative link names an existing
    file or folder, every table-of-contents anchor an element. Keeps its screenshot and copy as artefacts."""
    browser.open(report.as_uri())
    assert browser.errors() == []
    images = browser.images()
    assert images and all(image["complete"] and image["width"] > 0 for image in images), images
    relative = [
        h for h in json.loads(browser.evaluate(LINKS_JS)) if not h.startswith(("#", "data:", "http:", "https:"))
    ]
    assert relative and [h for h in relative if not (report.parent / h).exists()] == []
    assert json.loads(browser.evaluate(TOC_JS)) == [] and len(json.loads(browser.evaluate(LINKS_JS))) > len(relative)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}_screenshot.png").write_bytes(browser.screenshot())
    shutil.copy(report, ARTIFACTS / f"{name}.html")
    return images


def test_sweep_report_loads_from_disk_with_all_images(two_by_two: Path, browser: Chromium):  # noqa: F811
    make_job(two_by_two, 4, ["experiment=eurosat-vit", "model=vit_b16", "finetune=last"], status=None)
    write_summary(two_by_two)
    images = check_page(browser, two_by_two / "report.html", "report")
    grids = list(two_by_two.glob("attention_[A-Z]*.png"))  # linked from the Attention section, not embedded
    assert len(grids) == 2 and len(images) == len(list(two_by_two.glob("*.png"))) - len(grids) >= 3


def test_run_report_of_a_study_1_run(tmp_path: Path, browser: Chromium):
    from gnr650.train import train

    overrides = [
        "debug=smoke",
        "model=resnet18",
        "finetune=full",
        "trainer.max_epochs=2",
        "logger=csv",
        "callbacks=[default,resnet_exports,analysis]",
        "analysis.probe_images=16",
        "analysis.faithfulness_images=4",
        "analysis.faithfulness_steps=4",
    ]
    train(make_cfg(overrides, tmp_path))
    images = check_page(browser, tmp_path / "report.html", "run_report")
    # learning curves, what changed (drift, per layer, kernel norms, faithfulness, Grad-CAM), the confusion
    # matrix, first-layer kernels at start and end, the feature maps
    assert len(images) >= 10


def test_checks_catch_a_broken_page(tmp_path: Path, browser: Chromium):
    """The checks above can fail: a missing image and a console error are both seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="missing.png"><script>console.error("deliberate")</script></body></html>'
    )
    browser.open(page.as_uri())
    errors = browser.errors()
    assert any("deliberate" in e for e in errors) and any("missing.png" in e for e in errors), errors
    assert browser.images() == [{"complete": True, "width": 0}]
