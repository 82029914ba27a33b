"""Headless Chromium driven over the DevTools protocol: load a page, wait for it, read it, screenshot it."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
INSTALL = "apt-get install -y chromium"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=f"chromium is not installed: {INSTALL} (.ci/run does)")

# Offline and quiet: no sandbox (tests run as root in CI), no GPU, no background traffic, a fresh profile.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1280,900"]


class Page:
    """One tab. Every DevTools event that arrives while waiting for an answer is kept in `events`."""

    def __init__(self, socket):
        self.socket, self.last_id, self.events = socket, 0, []

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """One DevTools command, to this tab or to a target attached in `session`; waits for its answer."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        self.socket.send(json.dumps({**message, "sessionId": session} if session else message))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def evaluate_in_frame(self, url_prefix: str, expression: str):
        """Evaluate in the child frame whose URL starts with `url_prefix` (None while there is none). A
        sandboxed frame runs in a process of its own: DevTools lists it as a target to attach to."""
        frames = [t for t in self.call("Target.getTargets")["targetInfos"]
                  if t["type"] == "iframe" and t["url"].startswith(url_prefix)]
        if not frames:
            return None
        session = self.call("Target.attachToTarget", targetId=frames[0]["targetId"], flatten=True)["sessionId"]
        try:
            result = self.call("Runtime.evaluate", session=session, expression=expression, returnByValue=True)
        finally:
            self.call("Target.detachFromTarget", sessionId=session)
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout: float = 90, *, frame: str | None = None) -> object:
        """Poll a JavaScript expression until it is truthy: single-page apps fill themselves in after load.
        With `frame`, in the child frame whose URL starts with it (see evaluate_in_frame)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate_in_frame(frame, expression) if frame else self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 1500) : ''")
        raise AssertionError(f"{expression} stayed false for {timeout} s at {self.evaluate('location.href')}:\n{text}")

    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def requested_urls(self) -> list[str]:
        self.evaluate("1")  # collect the events that arrived since the last call
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        size = self.call("Page.getLayoutMetrics")["cssContentSize" if full_page else "cssVisualViewport"]
        width, height = size.get("width", size.get("clientWidth")), size.get("height", size.get("clientHeight"))
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    """A fresh headless Chromium (its own --user-data-dir), with one tab whose network log is on."""
    from websockets.sync.client import connect

    from tests.mlflow_server import stop

    log = profile.parent / f"{profile.name}.log"
    port_file = profile / "DevToolsActivePort"  # Chromium writes its port here once it listens
    port_file.unlink(missing_ok=True)  # a reused profile's would name a port nobody listens on
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start ({proc.poll()}):\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            [tab] = [t for t in json.loads(r.read()) if t["type"] == "page"]
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as socket:
            page = Page(socket)
            page.call("Page.enable")
            page.call("Network.enable")
            yield page
    finally:
        stop(proc)
