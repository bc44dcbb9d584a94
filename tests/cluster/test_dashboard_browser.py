"""The dashboard in a real browser: headless Debian Chromium, driven by Playwright.

A follower serves the page; it must show the leader, then a queue declared and
filled through the API (ready = 3), its detail view with configuration and
dead-letter queue, and (when the node serves them) exchanges and streams. The
screenshot lands in test-artifacts/dashboard.png for a person to look at.

`make test` installs Debian's chromium; without it the test skips and says so.
Playwright only drives the system Chromium (`playwright install` is never run).
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import NodeProc, request

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Chromium as the machine's closed network needs it: no background fetches, no QUIC, no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (make test does, when apt works)",
        allow_module_level=True,
    )


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A page in a fresh Chromium profile; the browser and Playwright's driver stop afterwards."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            timeout=TIMEOUT_MS,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            context.close()
    finally:
        playwright.stop()
    shutil.rmtree(profile, ignore_errors=True)


def _api(node: NodeProc, method: str, path: str, body: object = None) -> object:
    resp = request(method, node.url + path, body)
    assert resp.status in (200, 201), (method, path, resp.status, resp.body)
    return resp.body


def test_dashboard_shows_leader_queues_and_details(
    make_cluster: ClusterFactory, page: Page
) -> None:
    cluster = make_cluster().start()
    leader = cluster.wait_leader()
    follower = cluster.follower()

    page.goto(follower.url + "/")
    expect(page.locator("#leader")).to_have_attribute("data-leader-id", leader.node_id)
    expect(page.locator("#leader")).to_have_text(leader.node_id)
    expect(page.locator("#members tbody tr")).to_have_count(3)
    expect(page.locator("#store")).to_contain_text("MiB free")
    expect(page.locator("#storage-full")).to_be_hidden()

    _api(leader, "PUT", "/v1/queues/orders.dlq", {})
    _api(
        leader,
        "PUT",
        "/v1/queues/orders",
        {"visibility_timeout": 30, "max_deliveries": 5, "dead_letter_queue": "orders.dlq"},
    )
    _api(
        leader,
        "POST",
        "/v1/queues/orders/messages",
        {"messages": [{"body": f"order {i}"} for i in range(3)]},
    )
    pubsub = request("GET", follower.url + "/v1/exchanges").status == 200
    if pubsub:
        _api(leader, "PUT", "/v1/exchanges/events", {"type": "topic"})
        _api(leader, "PUT", "/v1/exchanges/events/bindings/orders", {"routing_key": "order.*"})
        _api(leader, "PUT", "/v1/streams/audit", {"max_age": 86400})
        _api(leader, "POST", "/v1/streams/audit/records", {"records": [{"body": "login"}]})

    row = page.locator('#queues tr[data-queue="orders"]')
    expect(row.locator('td[data-field="ready"]')).to_have_text("3")
    expect(row.locator('td[data-field="in_flight"]')).to_have_text("0")
    expect(page.locator('#queues tr[data-queue="orders.dlq"] td[data-field="ready"]')).to_have_text(
        "0"
    )

    # The detail view of a queue: its configuration and a link to its dead-letter queue.
    row.locator("a").first.click()
    detail = page.locator("#queue-detail")
    expect(detail).to_be_visible()
    expect(detail).to_have_attribute("data-queue", "orders")
    expect(detail.locator('td[data-config="visibility_timeout"]')).to_have_text("30")
    expect(detail.locator('td[data-config="max_deliveries"]')).to_have_text("5")
    expect(detail.locator('td[data-field="ready"]')).to_have_text("3")
    dlq_link = detail.locator("#detail-dlq-link")
    expect(dlq_link).to_have_text("orders.dlq")
    dlq_link.click()
    expect(detail).to_have_attribute("data-queue", "orders.dlq")
    expect(page.locator("#detail-dlq-of")).to_have_text("Dead-letter queue of: orders")
    page.go_back()
    expect(detail).to_have_attribute("data-queue", "orders")

    # Exchanges and streams appear exactly when the node serves them.
    exchanges, streams = page.locator("#exchanges-section"), page.locator("#streams-section")
    if pubsub:
        expect(exchanges.locator('tr[data-exchange="events"]')).to_contain_text("orders")
        expect(streams.locator('tr[data-stream="audit"]')).to_contain_text("audit")
    else:
        expect(exchanges).to_be_hidden()
        expect(streams).to_be_hidden()
    expect(page.locator("#error")).to_have_text("")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
