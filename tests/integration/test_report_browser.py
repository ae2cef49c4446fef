"""A rendered report in a real browser: headless Chromium driven over the DevTools protocol.

The report of a small real run (with markup planted in a question and a document) is opened from
``file://``. The test records every request the page makes, overrides ``alert``/``confirm``/
``prompt`` before any page script runs, and then checks in the live DOM that the leaderboard, the
charts (decoded images) and the drill-down are there, that the planted markup is shown as text and
ran nothing, that the inline table sorter works (so the Content Security Policy admits it and
nothing else), and that no request left ``file://``/``data:``. A full-page screenshot is kept in
``test-artifacts/``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.notebooks.fixture_store import XSS_DOC, XSS_QUESTION, build_fixture_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-default-apps", "--disable-extensions", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--metrics-recording-only", "--mute-audio", "--hide-scrollbars"]
TRAP = """(() => {
  window.__dialogs = [];
  for (const name of ['alert', 'confirm', 'prompt', 'print']) {
    window[name] = function (...args) { window.__dialogs.push(name + ':' + args.join(' ')); };
  }
})();"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """The smallest DevTools-protocol client this test needs: commands, and the events seen."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client (installed with chromadb's kubernetes client)

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def eval(self, expression: str):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    from workbench.report.artifacts import render_report

    fx = build_fixture_store(tmp_path_factory.getbasetemp() / "nb-fixture")
    return render_report(fx.experiment, fx.store_url, tmp_path_factory.mktemp("browser-reports"))


@pytest.fixture
def browser(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen([chromium, *FLAGS, "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                             f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, "chromium exited at start"
            assert time.time() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:  # loopback only
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_report_opens_offline_with_leaderboard_charts_and_drilldown(report_html, browser):
    b = browser
    for domain in ("Page", "Network", "Runtime", "Log"):
        b.send(f"{domain}.enable")
    b.send("Page.addScriptToEvaluateOnNewDocument", source=TRAP)
    b.send("Emulation.setDeviceMetricsOverride", width=1300, height=1000, deviceScaleFactor=1, mobile=False)
    url = report_html.resolve().as_uri()
    b.send("Page.navigate", url=url)
    b.wait_for("Page.loadEventFired")
    b.eval("new Promise(r => setTimeout(r, 300))")  # let late requests, if any, show up

    # The page is there: leaderboard, three decoded charts, the drill-down with both runs side by side.
    assert b.eval("document.title").startswith("nb_fixture")
    assert b.eval("document.querySelectorAll('table.leaderboard tbody tr').length") == 4
    images = b.eval("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])")
    assert len(images) == 3 and all(c and w > 100 and h > 100 and s == "data:image/png;base64," for c, w, h, s in images), images
    assert b.eval("document.querySelectorAll('details.question').length") >= 10
    assert b.eval("document.querySelectorAll('details.question .side').length") >= 10
    headings = b.eval("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    assert headings == ["Recommendation", "Leaderboard", "Reliability and safety", "Main effects", "Quality vs latency and cost",
                        "Distributions",
                        "Per-question drill-down", "Lineage"]

    # Untrusted text is text: visible verbatim, no element made from it, nothing ran.
    b.eval("document.querySelectorAll('details').forEach(d => d.open = true)")
    text = b.eval("document.body.innerText")
    assert XSS_QUESTION.strip() in text and XSS_DOC.strip() in text
    assert b.eval("document.querySelectorAll('script').length") == 1  # the table sorter
    assert b.eval("document.querySelectorAll('img:not([src^=\"data:image/png\"]), svg, iframe').length") == 0
    assert b.eval("window.__dialogs") == []

    # The inline sorter runs (the CSP admits it by hash): sort by rank, descending.
    rank_th = "document.querySelector('table.leaderboard thead th')"
    b.eval(f"{rank_th}.click(); {rank_th}.click()")
    assert b.eval("Array.from(document.querySelectorAll('table.leaderboard tbody tr')).map(r => r.cells[0].textContent)") == ["4", "3", "2", "1"]

    # Nothing outside file:// (or inline data:) was requested, and nothing was blocked by the CSP.
    requests = [e["params"]["request"]["url"] for e in b.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(u.startswith(("file://", "data:")) for u in requests), requests
    assert url in requests
    logs = [e["params"]["entry"]["text"] for e in b.events if e.get("method") == "Log.entryAdded"]
    assert not [m for m in logs if "Content Security Policy" in m or "ERR_" in m], logs

    # A full-page screenshot, kept as a test artifact.
    height = int(b.eval("document.documentElement.scrollHeight"))
    b.send("Emulation.setDeviceMetricsOverride", width=1300, height=min(height, 16000), deviceScaleFactor=1, mobile=False)
    shot = b.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "report-browser.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 50_000
