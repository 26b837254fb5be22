"""A real browser for the tests: Debian's Chromium (`install.sh dev` installs it), headless, driven over its DevTools
protocol (a WebSocket, websocket-client), so that report.html is checked as a person's browser shows it: the page
loads without a script error, its audio players play, its buttons sort and filter.

    with Chromium(tmp_path) as browser:
        browser.open(path)                      # file:// of a page; waits for its load event
        browser.run("document.title")           # a JavaScript expression's value (promises awaited)
        browser.errors                          # every uncaught exception, console error and failed load so far
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, List

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a container: no sandbox; nothing reached over the network (no updates, sync, QUIC, first-run pages);
# audio plays without a gesture, to no device.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--remote-debugging-port=0"]


class Chromium:
    """One headless Chromium with a fresh profile under `folder`, and one page of it."""

    def __init__(self, folder: Path, timeout: float = 30.0):
        self.folder, self.timeout = Path(folder), timeout
        self.errors: List[str] = []
        self._ids = itertools.count(1)

    def __enter__(self) -> "Chromium":
        import websocket

        profile = self.folder / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a profile used before: wait for this one's port
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file, deadline = profile / "DevToolsActivePort", time.time() + self.timeout
            while not (port_file.exists() and len(port_file.read_text().split()) == 2):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{CHROMIUM} did not start (exit {self.proc.poll()})")
                time.sleep(0.1)
            port, path = port_file.read_text().split()
            self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=self.timeout,
                                                  suppress_origin=True)
            target = self._send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self._send(f"{domain}.enable", session=True)
        except BaseException:  # no browser left behind
            self.proc.kill()
            self.proc.wait()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send("Browser.close")
        except Exception:  # already gone: stop the process below either way
            pass
        self.ws.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # ------------------------------------------------------------------------------------------ protocol
    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(f"exception: {details.get('exception', {}).get('description') or details['text']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                            for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")

    def _read(self) -> dict:
        message = json.loads(self.ws.recv())
        if "method" in message:
            self._event(message)
        return message

    def _send(self, method: str, session: bool = False, **params) -> dict:
        ident = next(self._ids)
        message = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            answer = self._read()
            if answer.get("id") == ident:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    # ------------------------------------------------------------------------------------------ the page
    def open(self, page: Path) -> None:
        """Load `page` (a file) and wait for its load event."""
        self._send("Page.navigate", session=True, url=Path(page).resolve().as_uri())
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self._read().get("method") == "Page.loadEventFired":
                return
        raise TimeoutError(f"{page} did not load in {self.timeout} s")

    def run(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited); an exception fails the test."""
        result = self._send("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                            returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def settle(self, seconds: float = 0.5) -> None:
        """Let the page's pending events (a load error, a late exception) arrive."""
        self.run(f"new Promise(function (done) {{ setTimeout(done, {int(seconds * 1000)}); }})")


def played(browser: Chromium, selector: str = "audio") -> dict:
    """The first player matching `selector` loaded and started: its readyState, duration and whether play() began,
    or the error the media element reports."""
    return browser.run("""(async function () {
      var a = document.querySelector(%s);
      if (!a) { return {found: false}; }
      a.preload = 'auto'; a.load();
      await new Promise(function (done, fail) {
        if (a.readyState >= 1) { return done(); }
        a.addEventListener('loadedmetadata', done); a.addEventListener('error', done);
        setTimeout(done, 10000);
      });
      var started = true;
      try { await a.play(); } catch (e) { started = String(e); }
      var state = {found: true, readyState: a.readyState, duration: a.duration, started: started,
                   error: a.error ? a.error.code + ' ' + a.error.message : null, src: a.currentSrc};
      a.pause();
      return state;
    })()""" % json.dumps(selector))


def available() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def check_report(run_dir: Path, tmp: Path, also: str = "") -> dict:
    """report.html of `run_dir`, copied elsewhere as a person would copy a run dir, opened in Chromium: it loads
    without a script error or a failed load, every link and picture is in the copy, its first player plays (its
    readyState reaches HAVE_METADATA at least), and its table sorts worst first and filters to the rows with errors.
    Returns what was seen, for the task's own checks (`also`: a JavaScript expression run last, its value as
    "also")."""
    import re

    copy = Path(tmp) / "copied run"  # a space in the path, as a person's folder may have
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "model"))
    page = (copy / "report.html").read_text()
    links = [x for x in re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page) if not x.startswith("data:")]
    for link in links:  # each relative, inside the run dir, and there
        assert "://" not in link and not link.startswith(("/", "..")) and (copy / link).is_file(), link
    with Chromium(Path(tmp) / "browser") as browser:
        browser.open(copy / "report.html")
        seen = {"players": browser.run("document.querySelectorAll('audio').length"), "links": links}
        if seen["players"]:
            seen["played"] = played(browser)
            assert seen["played"]["readyState"] >= 1 and seen["played"]["duration"] > 0, seen["played"]
            assert seen["played"]["started"] is True, seen["played"]
        seen["tables"] = browser.run("""(function () {
          return Array.prototype.map.call(document.querySelectorAll('table.rows'), function (table) {
            var bar = document.getElementById(table.dataset.controls);
            function rows() { return Array.prototype.slice.call(table.tBodies[0].rows, 1); }
            function shown() { return rows().filter(function (r) { return r.style.display !== 'none'; }); }
            bar.querySelector('.by-score').click();
            var scores = rows().map(function (r) { return parseFloat(r.dataset.sort); });
            var result = {rows: rows().length, sorted: scores, counter: bar.querySelector('.shown').textContent};
            var only = bar.querySelector('.only-errors');
            if (only) {
              only.click();
              result.filtered = shown().length;
              result.filtered_errors = shown().every(function (r) { return r.dataset.error === '1'; });
              result.errors = rows().filter(function (r) { return r.dataset.error === '1'; }).length;
              only.click();
            }
            bar.querySelector('.by-order').click();
            result.order = rows().map(function (r) { return parseInt(r.dataset.order, 10); });
            return result;
          });
        })()""")
        for table in seen["tables"]:
            assert table["sorted"] == sorted(table["sorted"], reverse=True), table
            assert table["order"] == list(range(table["rows"])), table
            if "filtered" in table:
                assert table["filtered"] == table["errors"] and table["filtered_errors"], table
        if also:
            seen["also"] = browser.run(also)
        browser.settle()
        assert browser.errors == [], browser.errors
    return seen
