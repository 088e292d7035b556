"""report.html in a real headless browser: it loads from file:// with no console error and every image decodes.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: NUL-separated
JSON on fds 3 and 4), which needs no websocket client, no port and no extra package.
The screenshot and the page are kept as artefacts in $GNR650_TEST_ARTIFACTS (default: test-artifacts/).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from gnr650.summary import write_summary
from tests.helpers import make_cfg
from tests.summary.jobs import make_job

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("GNR650_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM, reason="chromium not installed")]

IMAGES_JS = "JSON.stringify([...document.images].map(i => ({complete: i.complete, width: i.naturalWidth})))"
LINKS_JS = "JSON.stringify([...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')))"
# Table-of-contents entries whose target element is missing from the page.
TOC_JS = (
    "JSON.stringify([...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'))"
    ".filter(h => !document.getElementById(h.slice(1))))"
)


class Chromium:
    """A headless Chromium and one page, spoken to over the DevTools protocol on a pipe."""

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0):
        self.timeout = timeout
        self.events: list[dict] = []
        self._id = 0
        self._buffer = b""
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def remap_fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._stderr = (profile / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            pass_fds=(3, 4),
            preexec_fn=remap_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.page(f"{domain}.enable")
        self.page("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, **params) -> dict:
        return self.send(method, session=self.session, **params)

    def wait_for(self, method: str) -> dict:
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == self.session:
                    self.events.remove(event)
                    return event
            self.events.append(self._receive())

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            if not select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited with {self.proc.poll()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        self.events.clear()
        self.page("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads reported since the last `open`."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def evaluate(self, expression: str):
        return json.loads(self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"]["value"])

    def images(self) -> list[dict]:
        return self.evaluate(IMAGES_JS)

    def screenshot(self) -> bytes:
        size = self.page("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}
        shot = self.page("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, TimeoutError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._stderr.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


def check_page(browser: Chromium, report: Path, name: str) -> list[dict]:
    """Open ``report`` from disk: no console error, every image decoded, every relative link names an existing
    file or folder, every table-of-contents anchor an element. Keeps its screenshot and copy as artefacts."""
    browser.open(report.as_uri())
    assert browser.errors() == []
    images = browser.images()
    assert images and all(image["complete"] and image["width"] > 0 for image in images), images
    relative = [h for h in browser.evaluate(LINKS_JS) if not h.startswith(("#", "data:", "http:", "https:"))]
    assert relative and [h for h in relative if not (report.parent / h).exists()] == []
    assert browser.evaluate(TOC_JS) == [] and len(browser.evaluate(LINKS_JS)) > len(relative)
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
