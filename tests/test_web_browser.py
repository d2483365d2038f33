"""The dashboard in a real browser: headless Debian Chromium driven by Selenium (given
Debian's chromedriver, so nothing is downloaded), against a real Redis and a File storage,
with the server (hypercorn's trio worker) and a worker in this trio run.

It checks what a user does: read the counts on the overview, open the failed job, read
its traceback, press Retry and see it complete without a reload (server-sent events); a
hostile id and payload render as text; an action without the CSRF token is refused.
Screenshots of every page go to ``$TRIO_JOBQUEUE_ARTIFACTS`` (else pytest's tmp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from fixtures_redis import free_port, missing_tool, storage_factory_for

import trio_jobqueue as jq
from trio_jobqueue.storage.file import FileStorage

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HOSTILE_ID = "<script>window.__xss = 1</script>"
HOSTILE_PAYLOAD = {"html": '<img src="x" onerror="window.__xss = 2">'}
WAIT = 15.0


@pytest.fixture(params=["redis", "file"])
def browser_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], jq.Storage]:
    """Storage objects on one private Redis server (a key prefix of the test's own) or on
    one directory."""
    if request.param == "file":
        return lambda: FileStorage(tmp_path / "queue")
    factory: Callable[[], jq.Storage] = storage_factory_for(request.getfixturevalue("redis_server"))
    return factory


@pytest.fixture
def driver() -> Iterator[Any]:
    """A headless Chromium (Debian's), or a skip (a failure in CI) when it is missing."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        missing_tool(
            f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install chromium chromium-driver"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_tool("selenium missing: pip install -e '.[dev]'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--disable-extensions",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()


def _state(driver: Any) -> str:
    """The job page's state badge, read in one script call (the live fragment may be
    swapped between a find and a read)."""
    text: str = driver.execute_script(
        "const e = document.getElementById('job-state'); return e ? e.textContent : '';"
    )
    return text


def _artifacts(tmp_path: Path, backend: str) -> Path:
    root = os.environ.get("TRIO_JOBQUEUE_ARTIFACTS")
    where = (Path(root) if root else tmp_path) / f"web-{backend}"
    where.mkdir(parents=True, exist_ok=True)
    return where


async def test_find_a_failed_job_read_its_traceback_and_retry_it(
    browser_storage: Callable[[], jq.Storage],
    driver: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Overview counts; the failed job's traceback; Retry completes it live (no reload);
    a `<script>` id and payload stay text; a POST without the CSRF token is 403."""
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from trio_jobqueue.web import create_app

    backend = request.node.callspec.params["browser_storage"]
    shots = _artifacts(tmp_path, backend)
    allow = trio.Event()  # the handler fails until set, then waits for `finish`
    entered = trio.Event()
    finish = trio.Event()

    async def handler(job: jq.Job[Any]) -> str:
        if not allow.is_set():
            raise ValueError(f"mail server said no to {job.id}")
        entered.set()
        await finish.wait()
        return "sent"

    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    config.graceful_timeout = 0.5
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()

    async with trio.open_nursery() as nursery:
        async with jq.open_queue(
            browser_storage(), handler, name="mail", max_attempts=1, concurrency=2
        ) as worker:
            for job_id in ("welcome-1", HOSTILE_ID):
                with pytest.raises(jq.JobFailedError):
                    await worker.enqueue_and_wait(job_id, HOSTILE_PAYLOAD, timeout=WAIT)
            async with jq.open_queue(browser_storage(), name="reports") as other:
                await other.enqueue("r-1", {"month": 11})
            app = create_app(browser_storage())
            await nursery.start(serve, app, config)

            def overview_and_failed_list() -> None:
                driver.get(base + "/")
                row = driver.find_element(By.CSS_SELECTOR, "tr[data-queue='mail']")
                failed = row.find_element(By.CSS_SELECTOR, "[data-count='failed']")
                assert failed.text == "2"
                other_row = driver.find_element(By.CSS_SELECTOR, "tr[data-queue='reports']")
                assert other_row.find_element(By.CSS_SELECTOR, "[data-count='queued']").text == "1"
                driver.save_screenshot(str(shots / "overview.png"))
                failed.click()
                WebDriverWait(driver, WAIT).until(lambda d: "state=failed" in d.current_url)
                ids = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "td.jid a")]
                assert HOSTILE_ID in ids, ids  # shown as text
                assert driver.execute_script("return window.__xss") is None
                driver.save_screenshot(str(shots / "queue.png"))
                driver.find_element(By.LINK_TEXT, "welcome-1").click()
                trace = WebDriverWait(driver, WAIT).until(
                    lambda d: d.find_element(By.CSS_SELECTOR, "pre.trace")
                )
                assert "ValueError: mail server said no to welcome-1" in trace.text
                assert "Traceback" in trace.text
                assert _state(driver) == "failed"
                driver.save_screenshot(str(shots / "job-failed.png"))
                driver.execute_script("window.__marker = 42")

            await trio.to_thread.run_sync(overview_and_failed_list)
            allow.set()

            def press_retry() -> None:
                driver.find_element(By.CSS_SELECTOR, "button[data-action='retry']").click()
                WebDriverWait(driver, WAIT).until(
                    lambda d: _state(d) in ("queued", "processing")
                )

            await trio.to_thread.run_sync(press_retry)
            with trio.fail_after(WAIT):
                await entered.wait()
            finish.set()  # from here only the event stream can tell the page

            def sees_it_complete() -> None:
                WebDriverWait(driver, WAIT).until(
                    lambda d: _state(d) == "completed"
                )
                assert driver.execute_script("return window.__marker") == 42  # no reload
                # The event itself may come a moment after a refresh already showed it.
                WebDriverWait(driver, WAIT).until(
                    lambda d: "completed" in d.find_element(By.ID, "events").text
                )
                assert "sent" in driver.find_element(By.ID, "result").text
                driver.save_screenshot(str(shots / "job-completed.png"))

            await trio.to_thread.run_sync(sees_it_complete)

            def hostile_job_and_csrf() -> None:
                driver.get(base + "/queue?name=mail&state=failed")
                driver.find_element(By.LINK_TEXT, HOSTILE_ID).click()
                WebDriverWait(driver, WAIT).until(
                    lambda d: d.find_element(By.CSS_SELECTOR, "h1 code.jid").text == HOSTILE_ID
                )
                payload = driver.find_element(By.CSS_SELECTOR, "#payload pre").text
                assert json.dumps(HOSTILE_PAYLOAD["html"]) in payload  # as text, JSON-quoted
                assert driver.execute_script("return window.__xss") is None
                status = driver.execute_async_script(
                    "const done = arguments[arguments.length - 1];"
                    "fetch('/action', {method: 'POST', headers: {'Content-Type':"
                    " 'application/x-www-form-urlencoded'},"
                    " body: 'action=retry_failed&queue=mail'}).then(r => done(r.status));"
                )
                assert status == 403
                driver.get(base + "/workers")
                assert "mail" in driver.find_element(By.TAG_NAME, "main").text
                driver.save_screenshot(str(shots / "workers.png"))

            await trio.to_thread.run_sync(hostile_job_and_csrf)
            status = await worker.get_status(HOSTILE_ID)
            assert status is not None and status.state is jq.JobState.FAILED
        nursery.cancel_scope.cancel()
    took = time.monotonic() - started
    print(f"\n{backend}: browser scenario {took:.1f} s; screenshots in {shots}")
    assert sorted(p.name for p in shots.iterdir()) == [
        "job-completed.png",
        "job-failed.png",
        "overview.png",
        "queue.png",
        "workers.png",
    ]
    if os.environ.get("TRIO_JOBQUEUE_UPDATE_SCREENSHOTS") and backend == "redis":
        # The pictures of docs/web.md.
        docs = Path(__file__).parent.parent / "docs" / "images"
        shutil.copy(shots / "queue.png", docs / "web-queue.png")
        shutil.copy(shots / "job-failed.png", docs / "web-job.png")
