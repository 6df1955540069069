"""The web console in a real browser (Debian's Chromium): sign in, files, batches, results,
keys, tenancy, escaping. Screenshots of each tab go to $BATCHD_SCREENSHOTS (`make
screenshots` sets docs/), else to the test's temporary directory."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import OfflinePage
from tests.support.lines import INSTANT_MODELS, batch_line
from tests.support.server import Server, start_server, stop_server

CRAWL_MODEL = """
  - id: crawl-model
    engine: instant
    delay_seconds: 0.5
    concurrency: 2
"""
XSS_NAME = "<img src=x onerror=alert(1)>.jsonl"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("console")
    (root / "models.yaml").write_text(INSTANT_MODELS + CRAWL_MODEL)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def keys(server: Server) -> dict[str, str]:
    """An admin key and two tenants' user keys (made through the API by the operator key)."""
    made = {}
    with httpx.Client(base_url=server.base_url.removesuffix("/v1"),
                      headers={"Authorization": f"Bearer {server.api_key}"}) as admin:
        for name, role in (("ops", "admin"), ("alice", "user"), ("bob", "user")):
            response = admin.post("/admin/keys", json={"name": name, "role": role})
            assert response.status_code == 200, response.text
            made[name] = response.json()["secret"]
    return made


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BATCHD_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def console_url(server: Server) -> str:
    return server.base_url.removesuffix("/v1") + "/console"


def sign_in(page: Page, server: Server, key: str) -> None:
    page.goto(console_url(server))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Batches")).to_be_visible()


def upload(page: Page, path: Path) -> None:
    page.get_by_role("link", name="Files").click()
    page.get_by_label("File", exact=True).set_input_files(str(path))
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status").filter(has_text="Uploaded")).to_be_visible()
    expect(page.locator("tr[data-file]").filter(has_text=path.name)).to_be_visible()


def create_batch(page: Page, filename: str, metadata: str = "") -> str:
    page.get_by_role("link", name="Batches").click()
    option = page.locator("#create-file option", has_text=filename).first
    expect(option).to_be_attached()
    page.get_by_label("Input file").select_option(option.get_attribute("value"))
    if metadata:
        page.get_by_label("Metadata").fill(metadata)
    with page.expect_response(lambda r: r.url.endswith("/v1/batches")
                              and r.request.method == "POST") as created:
        page.get_by_role("button", name="Create batch").click()
    batch_id = str(created.value.json()["id"])
    expect(page.locator(f"tr[data-batch='{batch_id}']")).to_be_visible()
    return batch_id


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_wrong_key_is_refused_and_sign_out_forgets_the_key(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, shots: Path,
) -> None:
    page = offline_page.page
    page.goto(console_url(server))
    page.get_by_label("API key").fill("sk-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    page.screenshot(path=str(shots / "console-sign-in.png"))
    sign_in(page, server, keys["alice"])
    assert page.evaluate("sessionStorage.getItem('batchd.key')") == keys["alice"]
    assert page.evaluate("document.cookie") == ""
    assert keys["alice"] not in page.url
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('batchd.key')") is None
    assert offline_page.blocked == []


def test_upload_create_watch_and_download(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, tmp_path: Path,
    shots: Path,
) -> None:
    page = offline_page.page
    sign_in(page, server, keys["alice"])
    source = write(tmp_path / "questions.jsonl",
                   [batch_line(f"q{i}", f"question {i}") for i in range(12)])
    upload(page, source)
    expect(page.get_by_text("Largest upload")).to_be_visible()
    # Dropping a file on the zone uploads it too.
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(['{"custom_id": "d"}\\n'], "dropped.jsonl"));
        document.querySelector(".drop").dispatchEvent(
            new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    }""")
    expect(page.locator("tr[data-file]").filter(has_text="dropped.jsonl")).to_be_visible()
    page.screenshot(path=str(shots / "console-files.png"), full_page=True)
    batch_id = create_batch(page, "questions.jsonl", "project=demo")
    row = page.locator(f"tr[data-batch='{batch_id}']")
    expect(row.locator("td").nth(1)).to_have_text("completed", timeout=30_000)
    expect(row.get_by_text("project=demo")).to_be_visible()
    bar = row.locator("progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "12"
    page.screenshot(path=str(shots / "console-batches.png"), full_page=True)
    row.get_by_role("link", name=batch_id).click()
    expect(page.locator("#batch-status")).to_have_text("completed")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download output").click()
    lines = Path(info.value.path()).read_text().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in lines) == sorted(
        f"q{i}" for i in range(12))
    page.get_by_role("link", name="Results").click()
    expect(page.locator("#results-title")).to_be_visible()
    expect(page.get_by_text("Lines 1-12")).to_be_visible()
    page.get_by_label("Find a custom_id").fill("q7")
    page.get_by_role("button", name="Find").click()
    expect(page.get_by_text("Lines 1-1")).to_be_visible()
    expect(page.locator("td.mono", has_text="q7")).to_be_visible()
    page.screenshot(path=str(shots / "console-batch-detail.png"), full_page=True)
    assert offline_page.blocked == []


def test_a_bad_file_shows_its_line_numbered_errors(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, tmp_path: Path,
) -> None:
    page = offline_page.page
    sign_in(page, server, keys["alice"])
    bad = write(tmp_path / "broken.jsonl", [batch_line("a"), "{not json", batch_line("a")])
    upload(page, bad)
    batch_id = create_batch(page, "broken.jsonl")
    page.locator(f"tr[data-batch='{batch_id}']").get_by_role("link").click()
    expect(page.locator("#batch-status")).to_have_text("failed", timeout=30_000)
    errors = page.get_by_role("table", name="Errors in the input file")
    expect(errors.locator("tr", has_text="invalid_json").locator("td").first).to_have_text("2")
    expect(errors.locator("td").filter(has_text="3")).to_have_count(1)


def test_cancel_a_running_batch(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, tmp_path: Path,
) -> None:
    page = offline_page.page
    sign_in(page, server, keys["alice"])
    slow = write(tmp_path / "slow.jsonl",
                 [batch_line(f"s{i}", model="crawl-model") for i in range(100)])
    upload(page, slow)
    batch_id = create_batch(page, "slow.jsonl")
    page.locator(f"tr[data-batch='{batch_id}']").get_by_role("link").click()
    expect(page.locator("#batch-status")).to_have_text("in_progress", timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel batch").click()
    expect(page.locator("#batch-status")).to_have_text("cancelled", timeout=30_000)


def test_an_admin_creates_and_revokes_a_key(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, browser_page: Page,
    shots: Path,
) -> None:
    page = offline_page.page
    sign_in(page, server, keys["alice"])
    expect(page.get_by_role("link", name="API keys")).to_be_hidden()  # not an admin
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, server, keys["ops"])
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("carol")
    page.get_by_label("Role").select_option("user")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#key-secret-value").inner_text()
    assert secret.startswith("bd-") and len(secret) > 20
    page.screenshot(path=str(shots / "console-api-keys.png"), full_page=True)
    # The new key signs in elsewhere...
    sign_in(browser_page, server, secret)
    browser_page.get_by_role("button", name="Sign out").click()
    # ...until it is revoked.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke carol").click()
    expect(page.locator("tr", has_text="carol").get_by_text("revoked")).to_be_visible()
    browser_page.get_by_label("API key").fill(secret)
    browser_page.get_by_role("button", name="Sign in").click()
    expect(browser_page.get_by_role("alert")).to_contain_text("revoked")


def test_a_second_tenant_sees_none_of_the_first_ones_objects(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, tmp_path: Path,
) -> None:
    page = offline_page.page
    sign_in(page, server, keys["alice"])
    upload(page, write(tmp_path / "alices.jsonl", [batch_line("a")]))
    create_batch(page, "alices.jsonl")
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, server, keys["bob"])
    expect(page.locator("tr[data-batch]")).to_have_count(0)
    page.get_by_role("link", name="Files").click()
    expect(page.get_by_role("table", name="Files")).to_be_visible()
    expect(page.locator("tr[data-file]")).to_have_count(0)


def test_a_hostile_file_name_renders_as_text(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, tmp_path: Path,
) -> None:
    page = offline_page.page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, server, keys["alice"])
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    path = write(hostile / XSS_NAME, [batch_line("x")])
    upload(page, path)
    expect(page.locator("td", has_text=XSS_NAME)).to_be_visible()
    assert page.locator("img").count() == 0 and dialogs == []
    response = page.request.get(console_url(server))
    assert "script-src 'self'" in response.headers["content-security-policy"]


def test_models_and_a_streamed_reply_at_phone_width(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, shots: Path,
) -> None:
    page = offline_page.page
    sign_in(page, server, keys["alice"])
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_role("cell", name="org/instant-alias, org/second-alias")).to_be_visible()
    page.get_by_label("Message").fill("hello there")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#chat-reply")).not_to_be_empty()
    page.screenshot(path=str(shots / "console-models.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_role("link", name="Batches").click()
    expect(page.get_by_role("heading", name="Batches")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "console-batches-phone.png"), full_page=True)


def api_client(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"},
                        timeout=30)


def run_batch(client: httpx.Client, lines: list[str]) -> dict[str, Any]:
    data = ("\n".join(lines) + "\n").encode()
    file_id = client.post("/files", files={"file": ("u.jsonl", data)},
                          data={"purpose": "batch"}).json()["id"]
    batch = client.post("/batches", json={"input_file_id": file_id, "completion_window": "24h",
                                          "endpoint": "/v1/chat/completions"}).json()
    deadline = time.monotonic() + 60
    while batch["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.get(f"/batches/{batch['id']}").json()
    assert batch["status"] == "completed", batch
    return dict(batch)


def chart_numbers(page: Page, name: str) -> dict[str, Any]:
    numbers: dict[str, Any] = page.evaluate(f"window.batchdCharts[{name!r}].numbers")
    return numbers


def test_usage_charts_show_what_the_usage_api_returns(
    server: Server, keys: dict[str, str], offline_page: OfflinePage, shots: Path,
) -> None:
    with api_client(server, keys["bob"]) as bob:
        batch = run_batch(bob, [batch_line(f"u{i}", "tally these words") for i in range(5)])
        assert bob.post("/chat/completions", json={
            "model": "instant-model", "messages": [{"role": "user", "content": "hi"}]}
        ).status_code == 200
    page = offline_page.page
    sign_in(page, server, keys["bob"])
    with page.expect_response(lambda r: "/organization/usage/completions" in r.url
                              and "group_by=model" in r.url) as by_model, \
         page.expect_response(lambda r: "group_by=batch" in r.url) as by_batch:
        page.get_by_role("link", name="Usage").click()
    expect(page.locator("#chart-tokens canvas").first).to_be_attached()
    # The bars are the API's numbers: tokens per model per bucket, requests batch/real time.
    buckets = by_model.value.json()["data"]
    tokens = chart_numbers(page, "usage-tokens")
    assert tokens["times"] == [b["start_time"] for b in buckets]
    drawn = {s["label"]: s["values"] for s in tokens["series"]}
    assert drawn == {"instant-model": [sum(r["input_tokens"] + r["output_tokens"]
                                           for r in b["results"]) for b in buckets]}
    requests = {s["label"]: sum(s["values"])
                for s in chart_numbers(page, "usage-requests")["series"]}
    assert requests == {"batch": 5, "real time": 1}
    assert sum(r["num_model_requests"] for b in by_batch.value.json()["data"]
               for r in b["results"]) == 6
    # bob's usage is exactly his batch's usage and his one answer's.
    assert sum(drawn["instant-model"]) >= batch["usage"]["total_tokens"]
    totals = page.get_by_role("table", name="Usage totals by model")
    expect(totals.locator("tr", has_text="instant-model").locator("td").nth(1)).to_have_text("6")
    expect(page.get_by_text("No prices are set")).to_be_visible()
    page.screenshot(path=str(shots / "console-usage.png"), full_page=True)
    # Readable on a phone: the charts shrink to the page, nothing scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("window.batchdCharts['usage-tokens'].plot.width <= 390")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(shots / "console-usage-phone.png"), full_page=True)
    # A batch's page charts its progress: finished and failed requests over time.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(console_url(server) + f"#/batch/{batch['id']}")
    expect(page.locator("#progress-chart canvas").first).to_be_attached()
    progress = {s["label"]: s["values"] for s in chart_numbers(page, "batch-progress")["series"]}
    assert progress["finished"][0] == 0 and progress["finished"][-1] == 5
    assert progress["failed"][-1] == 0
    assert offline_page.blocked == []


def test_an_admin_sees_usage_per_owner(
    server: Server, keys: dict[str, str], offline_page: OfflinePage,
) -> None:
    with api_client(server, keys["alice"]) as alice:
        run_batch(alice, [batch_line("o1", "owner words")])
    page = offline_page.page
    sign_in(page, server, keys["ops"])
    with page.expect_response(lambda r: "group_by=project_id" in r.url) as by_owner:
        page.get_by_role("link", name="Usage").click()
    expect(page.locator("#chart-owners canvas").first).to_be_attached()
    owners = {s["label"]: sum(s["values"]) for s in chart_numbers(page, "usage-owners")["series"]}
    answered: dict[str, int] = {}
    for bucket in by_owner.value.json()["data"]:
        for r in bucket["results"]:
            answered[r["project_id"]] = (answered.get(r["project_id"], 0) + r["input_tokens"]
                                         + r["output_tokens"])
    assert owners == answered and len(owners) >= 2
