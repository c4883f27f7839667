"""The status page in a real headless Chromium against a real relay process: the operator
enters the admin token, sees a dead letter and its state, the last hour's charts with the
relay's own samples, opens the sink's row to read its recent errors, traces the event's key
(where is it, per sink), presses the dead letter's Retry button, and the event reaches the
receiver. A screenshot of the page is kept in test-artifacts/ (docs/status-page.png is a copy
of it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.browser import INSTALL_HINT, Browser, Page, find_chromium
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
ADMIN = "status-page-admin-5e1"
TOKEN = "status-page-ingest-8b0"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MAIN_ROW = "#sinks-body tr[data-sink='webhook:main']"


@pytest.fixture
async def down_receiver() -> AsyncIterator[Receiver]:
    """The target of webhook:archive, answering 503 to everything."""
    r = await Receiver(status=503).start()
    yield r
    await r.stop()


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    if find_chromium() is None:  # a missing browser fails the run, it never skips
        pytest.fail(f"Chromium is not installed: {INSTALL_HINT}", pytrace=False)
    browser = await Browser.launch(tmp_path / "browser")
    try:
        yield await browser.new_page()
    finally:
        await browser.close()


async def post(relay: RelayProcess, body: bytes) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            relay.url + "/minio", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            return response.status


async def dead_letters(relay: RelayProcess) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            relay.url + "/admin/api/dlq", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as response:
            assert response.status == 200
            return list((await response.json())["dead_letters"])


def rows(table: str) -> str:
    return f"document.querySelectorAll('#{table}-body tr').length"


def text(selector: str) -> str:
    return f"((document.querySelector({json.dumps(selector)}) || {{}}).textContent || '')"


async def test_status_page_retries_a_dead_letter_in_a_real_browser(
    page: Page,
    receiver: Receiver,
    down_receiver: Receiver,
    relay_factory: Callable[..., RelayProcess],
) -> None:
    receiver.status = lambda n: 400 if n == 1 else 200  # the first event is refused
    relay = await relay_factory({
        "RELAY_AUTH_TOKENS": TOKEN,
        "RELAY_ADMIN_TOKENS": ADMIN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_MAIN": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_MAIN": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_ARCHIVE": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_ARCHIVE": down_receiver.url,
        "RELAY_ADMIN_SAMPLE_INTERVAL": "500ms",  # the charts get points within the test
    }).start()  # fmt: skip
    assert await post(relay, minio_body("photos", "2024/cat 1.jpg", 1)) == 200
    await eventually(lambda: dead_letters(relay))
    assert await post(relay, minio_body("photos", "2024/dog.jpg", 2)) == 200
    await receiver.wait_for(1)
    assert await post(relay, b'{"Records": [{"truncated') == 202  # one quarantined body

    await page.goto(relay.url + "/admin/")
    assert await page.evaluate("!document.getElementById('token-form').hidden")
    assert await page.evaluate("document.getElementById('main').hidden")  # nothing before
    await page.type("#token", ADMIN)
    await page.press_enter()

    # the dead letter, the sink, the quarantined body and the recent events are all shown
    await page.wait_for(f"{rows('dlq')} === 1")
    dlq_row = await page.evaluate(text("#dlq-body tr"))
    assert "photos/2024/cat 1.jpg" in dlq_row and "HTTP 400" in dlq_row, dlq_row
    assert "waiting" in dlq_row, dlq_row
    await page.wait_for(f"{text(MAIN_ROW)}.includes('webhook:main')")
    sink_row = await page.evaluate(text(MAIN_ROW))
    assert "up" in sink_row, sink_row
    await page.wait_for(f"{rows('quarantine')} === 1")
    await page.wait_for(f"{rows('events')} === 2")  # from the live stream, caught up
    await page.wait_for("document.getElementById('status').textContent.startsWith('connected')")

    # the charts: drawn from the relay's samples, the events just posted in them
    ingest, delivered, backlog = (f"document.getElementById('chart-{n}').dataset"
                                  for n in ("ingest", "delivered", "backlog"))  # fmt: skip
    await page.wait_for(f"Number({ingest}.peak) > 0 && Number({delivered}.peak) > 0")
    await page.wait_for(f"Number({backlog}.points) > 1 && Number({backlog}.latest) === 2")
    assert (await page.evaluate(text("#chart-ingest .latest"))).startswith("now ")
    drawn = await page.evaluate(
        "[...document.querySelectorAll('#chart-ingest polyline')]"
        ".map(l => [l.dataset.series, l.getAttribute('points').split(' ').length])"
    )
    samples = await page.evaluate(f"Number({ingest}.points)")
    assert len(drawn) == 1 and drawn[0][0] == "ingest" and drawn[0][1] >= samples - 1, drawn
    sink_lines = "#chart-backlog polyline[data-series='webhook:main']"
    assert await page.evaluate(f"document.querySelectorAll({json.dumps(sink_lines)}).length") == 1
    legend = "[...document.querySelectorAll('#chart-legend .item')].map(i => i.textContent)"
    assert sorted(await page.evaluate(legend)) == ["webhook:archive", "webhook:main"]
    before = await page.evaluate(f"Number({ingest}.points)")
    await page.wait_for(f"Number({ingest}.points) > {before}")  # new samples keep coming
    assert any("/admin/api/series?after=" in url for url in page.requested)  # only new ones

    # the sink's row opens on its recent errors: the refused event, dead-lettered
    await page.click(MAIN_ROW + " button.errors")
    opened = "#sinks-body tr.sink-errors[data-sink='webhook:main']"
    await page.wait_for(f"{text(opened)}.includes('HTTP 400')")
    recent = await page.evaluate(text(opened + " table.errors tr:nth-child(2)"))
    assert "dead-lettered" in recent and "photos/2024/cat 1.jpg" in recent, recent
    await page.wait_for(f"{text('#status')}.startsWith('connected · updated')")
    await page.wait_for(f"document.querySelector({json.dumps(opened)}) !== null")  # stays open

    # where is my event: the key searched, the sink's state shown per event
    await page.type("#trace-q", "photos/2024/cat 1.jpg")
    await page.press_enter()
    trace_row = "#trace-results .trace-event[data-seq='1'] tr[data-sink='webhook:main']"
    await page.wait_for(f"{text(trace_row)}.includes('dead-lettered')")
    traced = await page.evaluate(text(trace_row))
    assert "HTTP 400" in traced and "no retry under way" in traced, traced
    assert (
        await page.evaluate(
            f"document.querySelector({json.dumps(trace_row + ' td.state')}).className"
        )
        == "state dead-lettered"
    )
    assert "received " in await page.evaluate(text("#trace-results .trace-event p"))
    shot = await page.screenshot(ARTIFACTS / "status-page.png")
    assert shot.stat().st_size > 10_000

    # the token is kept for the tab and sent as a header, never in a URL
    assert await page.evaluate("sessionStorage.getItem('relay-admin-token')") == ADMIN
    assert await page.evaluate(f"location.href.includes({json.dumps(ADMIN)})") is False
    assert any("/admin/api/dlq" in url for url in page.requested)
    assert not [url for url in page.requested if ADMIN in url]

    # Retry: the receiver now takes it; the dead letter is no longer waiting
    await page.click("#dlq-body tr button.retry")
    got = await receiver.wait_for(2)
    assert got[-1].json()["Key"] == "photos/2024/cat 1.jpg"
    assert all(d["state"] == "being retried to webhook:main" for d in await dead_letters(relay))
    await page.wait_for(f"{rows('dlq')} === 0")  # delivered: no longer a dead letter
    assert await page.evaluate("!document.getElementById('dlq-empty').hidden")
    assert await dead_letters(relay) == []

    # an event arriving now shows up live, newest first
    assert await post(relay, minio_body("photos", "2024/bird.jpg", 3)) == 200
    await page.wait_for(f"{text('#events-body tr')}.includes('photos/2024/bird.jpg')")
    await receiver.wait_for(3)
    await page.wait_for(
        f"{text(MAIN_ROW + ' td.cursor')} === '3' && {text(MAIN_ROW + ' td.pending')} === '0'"
    )
    assert await page.evaluate(text(MAIN_ROW + " td.parked")) == "0"  # nothing waits
    # webhook:archive, down all along: its backlog is every event, its row says why
    archive = "#sinks-body tr[data-sink='webhook:archive']"
    assert await page.evaluate(text(archive + " td.pending")) == "3"
    await page.click(archive + " button.errors")
    opened = "#sinks-body tr.sink-errors[data-sink='webhook:archive']"
    await page.wait_for(f"{text(opened)}.includes('HTTP 503')")
    assert "retrying" in await page.evaluate(text(opened))
    # traced again: delivered now; a key the log does not have says so
    await page.click("#trace-go")
    await page.wait_for(f"{text(trace_row)}.includes('delivered')")
    await page.evaluate("document.getElementById('trace-q').value = ''")
    await page.type("#trace-q", "photos/nowhere.jpg")
    await page.click("#trace-go")
    await page.wait_for(
        f"{text('#trace-results .trace-note')}.startsWith('no event of photos/nowhere.jpg')"
    )
    assert (
        await page.evaluate("document.querySelectorAll('#trace-results .trace-event').length") == 0
    )
    await page.screenshot(ARTIFACTS / "status-page-after-retry.png")
    assert page.errors == []
