"""
The dashboard in a real browser: Debian's headless Chromium (Selenium,
tests/_browser.py) against a real C{twistd gearman --http} process with jobs
flowing (a raw-socket worker that completes most jobs and fails some, and a
submitter, each in a thread); loopback only, every wait bounded.

C{TXGEAR_DASHBOARD_SCREENSHOT=PATH} saves a screenshot of the page with
jobs flowing (docs/images/dashboard.png is made so).
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from typing import Any, Iterator

import pytest

from tests._browser import consoleErrors, headlessChromium
from tests._peers import freePort, txgearProcess, waitForPort
from tests._rawclient import RawClient, adminOnce
from txgear._packet import PacketType as P

WORK = b"dash-resize"
IDLE = b"dash-idle"
HOSTILE = "<img src=x onerror=alert(1)>"
WAIT = 20.0  # seconds: the longest any expected change may take


class Traffic:
    """A worker and a submitter in threads, until L{stop}."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.errors: list = []
        self.threads = [threading.Thread(target=self._guard, args=(self._work,), daemon=True),
                        threading.Thread(target=self._guard, args=(self._submit,), daemon=True)]

    def start(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)

    def _guard(self, loop: Any) -> None:
        try:
            loop()
        except Exception as e:  # reported by the test, not lost in a thread
            if not self.stopping.is_set():
                self.errors.append(e)

    def _work(self) -> None:
        with RawClient(self.port) as worker:
            worker.register(WORK, clientId=b"resizer-1")
            done = 0
            while not self.stopping.is_set():
                kind, args = worker.grab(P.GRAB_JOB)
                if kind == P.NO_JOB:
                    time.sleep(0.05)
                    continue
                assert kind == P.JOB_ASSIGN, kind
                handle = args[0]
                time.sleep(0.02)  # the work
                done += 1
                if done % 23 == 0:
                    worker.send(P.WORK_EXCEPTION, handle,
                                b"Traceback (most recent call last):\nValueError: bad image")
                elif done % 11 == 0:
                    worker.send(P.WORK_FAIL, handle)
                else:
                    worker.send(P.WORK_COMPLETE, handle, b"ok")

    def _submit(self) -> None:
        with RawClient(self.port) as client:
            n = 0
            while not self.stopping.is_set():
                n += 1
                client.submit(WORK, b"image %d" % n, kind=P.SUBMIT_JOB_BG)
                time.sleep(0.03)


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[Any]:
    httpPort = freePort()
    proc = txgearProcess(extra=["--queue", "memory", "--http",
                                f"tcp:{httpPort}:interface=127.0.0.1"],
                         cwd=str(tmp_path_factory.mktemp("dashboard")))
    proc.start()
    waitForPort(httpPort)
    proc.url = f"http://127.0.0.1:{httpPort}"  # type: ignore[attr-defined]
    traffic = Traffic(proc.port).start()
    try:
        yield proc
        assert traffic.errors == []
    finally:
        traffic.stop()
        proc.stop()


@pytest.fixture()
def browser() -> Iterator[Any]:
    driver = headlessChromium(width=1280, height=1100)
    try:
        yield driver
    finally:
        driver.quit()


def waitFor(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, message=what)


def text(driver: Any, elementId: str) -> str:
    from selenium.webdriver.common.by import By
    return str(driver.find_element(By.ID, elementId).text)


def functionNames(driver: Any) -> list:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#functions tbody td.name'))"
        ".map(function (td) { return td.textContent; });")


def deadRows(driver: Any) -> dict:
    """The dead section as the page shows it: hidden, the handles and functions listed."""
    return driver.execute_script(
        "var rows = Array.from(document.querySelectorAll('#dead-jobs tbody tr'));"
        "return {hidden: document.getElementById('dead').hidden,"
        " empty: !document.getElementById('dead-empty').hidden,"
        " handles: rows.map(function (r) { return r.cells[2].textContent; }),"
        " functions: rows.map(function (r) { return r.cells[1].textContent; }),"
        " errors: rows.map(function (r) { return r.cells[4].textContent; })};")


def submitBackground(port: int, function: bytes, payload: bytes = b"x") -> bytes:
    with RawClient(port) as client:
        return client.submit(function, payload, kind=P.SUBMIT_JOB_BG)


def test_the_page_is_live_as_jobs_complete(server: Any, browser: Any) -> None:
    browser.get(server.url + "/")
    waitFor(browser, lambda d: text(d, "connection") == "live", "the page polls the API")
    waitFor(browser, lambda d: text(d, "sum-complete").isdigit()
            and int(text(d, "sum-complete")) > 0, "completed jobs shown")
    first = int(text(browser, "sum-complete"))
    waitFor(browser, lambda d: int(text(d, "sum-complete")) > first,
            "the completed count grows without a reload")
    assert WORK.decode() in functionNames(browser)
    waitFor(browser, lambda d: "resizer-1" in text(d, "workers"), "the worker is listed")
    waitFor(browser, lambda d: "ValueError: bad image" in text(d, "failures"),
            "a recent failure with its error")
    waitFor(browser, lambda d: d.execute_script(
        "return document.querySelectorAll('#chart-throughput polyline').length") == 2,
        "the throughput chart is drawn")
    # Failed background jobs of the default policy are dead: the section lists them.
    waitFor(browser, lambda d: WORK.decode() in deadRows(d).get("functions", []),
            "the dead set shown")
    if os.environ.get("TXGEAR_DASHBOARD_SCREENSHOT"):
        # Some jobs nobody runs yet, then enough points on the charts.
        with RawClient(server.port) as client:
            for kind in (P.SUBMIT_JOB_HIGH_BG, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_BG, P.SUBMIT_JOB_LOW_BG):
                client.submit(b"thumbnail", b"t", kind=kind)
        time.sleep(30)
        browser.save_screenshot(os.environ["TXGEAR_DASHBOARD_SCREENSHOT"])
    assert consoleErrors(browser) == []


def test_cancelling_a_queued_job_from_the_page(server: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    handle = submitBackground(server.port, IDLE)
    browser.get(server.url + "/")
    waitFor(browser, lambda d: IDLE.decode() in functionNames(d), "the queued job's function")
    browser.find_element(By.ID, "cancel-handle").send_keys(handle.decode())
    browser.find_element(By.ID, "cancel-button").click()
    waitFor(browser, lambda d: text(d, "cancel-result").startswith("cancelled"),
            "the page says it cancelled the job")
    with RawClient(server.port) as admin:
        assert handle not in admin.admin("show jobs")
    with urllib.request.urlopen(f"{server.url}/v1/stats", timeout=10) as response:
        functions = {f["name"]: f for f in json.load(response)["functions"]}
    assert functions.get(IDLE.decode(), {}).get("queued", {}).get("normal", 0) == 0
    assert consoleErrors(browser) == []


def test_a_hostile_function_name_shows_as_text(server: Any, browser: Any) -> None:
    submitBackground(server.port, HOSTILE.encode())
    browser.get(server.url + "/")
    waitFor(browser, lambda d: HOSTILE in functionNames(d), "the name shown verbatim")
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return document.title") == "txgear"
    from selenium.common.exceptions import NoAlertPresentException
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    assert consoleErrors(browser) == []


def test_a_phone_sized_window_shows_the_functions_without_overflow(server: Any) -> None:
    driver = headlessChromium(width=390, height=844)
    try:
        # A headless window has a minimum width above a phone's: emulate the screen.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        driver.get(server.url + "/")
        waitFor(driver, lambda d: WORK.decode() in functionNames(d), "the functions table")
        width = driver.execute_script("return document.documentElement.clientWidth")
        assert width == 390
        assert driver.execute_script(
            "return document.documentElement.scrollWidth") <= width
        assert driver.execute_script("return document.body.scrollWidth") <= width
        table = driver.execute_script(
            "var r = document.getElementById('functions').parentNode.getBoundingClientRect();"
            "return [r.left, r.right];")
        assert 0 <= table[0] and table[1] <= width
        assert consoleErrors(driver) == []
    finally:
        driver.quit()


DEAD = b"dash-dead"
HOSTILE_ERROR = b"<img src=x onerror=alert(2)> bad input"


def grabWithin(worker: RawClient, seconds: float = WAIT) -> Any:
    """The next job a polling worker gets (JOB_ASSIGN's arguments), within C{seconds}."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind, args = worker.grab(P.GRAB_JOB)
        if kind == P.JOB_ASSIGN:
            return args
        assert kind == P.NO_JOB, kind
        time.sleep(0.05)
    raise AssertionError("no job to grab")


def test_dead_jobs_are_listed_and_retried_from_the_page(tmp_path: Any) -> None:
    """
    A function allowed one attempt: a failing worker's jobs enter the dead
    set, the page lists them (a hostile error as text), "Retry" on one row
    and then "Retry all" queue them again, a worker completes them, and the
    section empties.
    """
    from selenium.webdriver.common.by import By

    httpPort = freePort()
    proc = txgearProcess(extra=["--queue", "memory", "--http",
                                f"tcp:{httpPort}:interface=127.0.0.1",
                                "--policy", f"{DEAD.decode()}=attempts:1,on:fail"],
                         cwd=str(tmp_path))
    proc.start()
    driver = headlessChromium(width=1280, height=1100)
    try:
        waitForPort(httpPort)
        driver.get(f"http://127.0.0.1:{httpPort}/")
        waitFor(driver, lambda d: text(d, "connection") == "live", "the page polls the API")
        waitFor(driver, lambda d: not deadRows(d)["hidden"] and deadRows(d)["empty"],
                "the dead section, empty")
        with RawClient(proc.port) as worker:
            worker.register(DEAD)
            first = submitBackground(proc.port, DEAD, b"one")
            second = submitBackground(proc.port, DEAD, b"two")
            assert grabWithin(worker)[0] == first
            worker.send(P.WORK_FAIL, first)
            assert grabWithin(worker)[0] == second
            worker.send(P.WORK_EXCEPTION, second, HOSTILE_ERROR)
            waitFor(driver, lambda d: sorted(deadRows(d)["handles"]) == sorted(
                [first.decode(), second.decode()]), "both jobs in the dead section")
            assert text(driver, "dead-count") == "(2)"
            assert HOSTILE_ERROR.decode() in deadRows(driver)["errors"]
            assert driver.execute_script("return document.querySelectorAll('img').length") == 0

            # Retry the first from its row; a worker completes it.
            row = deadRows(driver)["handles"].index(first.decode())
            driver.find_elements(By.CSS_SELECTOR, "#dead-jobs tbody tr")[row].find_element(
                By.CSS_SELECTOR, "button.dead-retry").click()
            waitFor(driver, lambda d: text(d, "dead-result") == "retried 1",
                    "the page says it retried the job")
            handle, _, payload = grabWithin(worker)
            assert (handle, payload) == (first, b"one")
            worker.send(P.WORK_COMPLETE, first, b"done")
            waitFor(driver, lambda d: deadRows(d)["handles"] == [second.decode()],
                    "only the second job left dead")

            # Retry all; the worker completes the second too.
            driver.find_element(By.ID, "dead-retry-all").click()
            handle, _, payload = grabWithin(worker)
            assert (handle, payload) == (second, b"two")
            worker.send(P.WORK_COMPLETE, second, b"done")
            waitFor(driver, lambda d: deadRows(d)["empty"] and deadRows(d)["handles"] == [],
                    "the dead section empties")
            assert text(driver, "dead-count") == "(0)"
            assert adminOnce(proc.port, "show dead") == b".\n"
        from selenium.common.exceptions import NoAlertPresentException
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text
        assert consoleErrors(driver) == []
    finally:
        driver.quit()
        proc.stop()
