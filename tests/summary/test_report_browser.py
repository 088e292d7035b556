"""report.html in a real headless browser: it loads from file:// with no console error and every image decodes.

Chromium is driven over the DevTools protocol on a pipe (tests/summary/chromium.py).
The screenshot and the page are kept as artefacts in $GNR650_TEST_ARTIFACTS (default: test-artifacts/).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gnr650.summary import write_summary
from tests.summary.chromium import ARTIFACTS, CHROMIUM, Chromium
from tests.summary.jobs import make_job

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM, reason="chromium not installed")]


def test_report_loads_from_disk_with_all_images(two_by_two: Path, browser: Chromium):  # noqa: F811
    make_job(two_by_two, 4, ["experiment=eurosat-vit", "model=vit_b16", "finetune=last"], status=None)
    write_summary(two_by_two)
    report = two_by_two / "report.html"
    browser.open(report.as_uri())
    assert browser.errors() == []
    images = browser.images()
    assert len(images) == len(list(two_by_two.glob("*.png"))) >= 5
    assert all(image["complete"] and image["width"] > 0 for image in images), images
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report_screenshot.png").write_bytes(browser.screenshot())
    shutil.copy(report, ARTIFACTS / "report.html")


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
