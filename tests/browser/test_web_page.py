"""The web page, driven like a visitor would: paint, watch, download, cancel, start picture, mistakes."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from shared.keys import Keys
from tests.browser.conftest import API_KEY, Shot, open_page
from tests.integration.conftest import Stack

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TERMINAL = ("succeeded", "failed", "canceled")

# Records, inside the page, every value the progress bar takes and a hash of every picture shown.
WATCH_JS = """
() => {
  const seen = {progress: [], pictures: []};
  window.__seen = seen;
  const bar = document.getElementById("progress");
  new MutationObserver(() => seen.progress.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
  const img = document.getElementById("picture");
  const canvas = document.createElement("canvas");
  img.addEventListener("load", () => {
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let hash = 0;
    for (let i = 0; i < data.length; i++) hash = (Math.imul(hash, 31) + data[i]) | 0;
    seen.pictures.push({kind: img.dataset.kind, hash, width: img.naturalWidth});
  });
}
"""


def fill_job(page: Page, prompt: str, size: int = 64, iterations: int = 200, cutn: int = 4) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Width", exact=True).fill(str(size))
    page.get_by_label("Height", exact=True).fill(str(size))
    page.get_by_label("Iterations", exact=True).fill(str(iterations))
    if not page.locator("details.more").evaluate("details => details.open"):
        page.locator("details.more > summary").click()
    page.get_by_label("Cutouts", exact=True).fill(str(cutn))


def submit(page: Page) -> str:
    """Press Paint; returns the new job's id (the page puts it in the address)."""
    before = page.evaluate("location.hash")
    page.get_by_role("button", name="Paint", exact=True).click()
    page.wait_for_function(f"location.hash.startsWith('#job=') && location.hash !== {before!r}")
    return str(page.evaluate("location.hash.slice(5)"))


def badge(page: Page) -> str:
    return str(page.locator("#job-badge").inner_text()).strip().lower()


def job_view(base_url: str, job_id: str, **headers: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/jobs/{job_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_finished(page: Page, timeout_ms: int = 120_000) -> str:
    page.wait_for_function(
        "['succeeded', 'failed', 'canceled'].includes(document.getElementById('frame').dataset.status)",
        timeout=timeout_ms,
    )
    return badge(page)


def start_picture(path: Path) -> Path:
    """A picture a person might start from: left half red, right half blue."""
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    image.paste((30, 60, 200), (48, 0, 96, 64))
    image.save(path)
    return path


def test_paint_watch_and_download(page: Page, page_url: str, shot: Shot) -> None:
    page.get_by_role("button", name="a red circle on a blue background", exact=True).click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a red circle on a blue background")
    # The limits come from /v1/config.
    expect(page.get_by_label("Iterations", exact=True)).to_have_attribute("max", "1000")
    fill_job(page, "a red circle on a blue background", size=64, iterations=200)
    page.evaluate(WATCH_JS)
    job_id = submit(page)

    progress = page.get_by_role("progressbar")
    expect(progress).to_have_attribute("aria-valuemax", "200")
    page.wait_for_function(
        "Number(document.getElementById('progress').getAttribute('aria-valuenow')) >= 60", timeout=60_000
    )
    expect(page.locator("#progress-rate")).to_contain_text("it/s")
    expect(page.locator("#job-note")).to_contain_text("untrained demo model")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_visible()
    alt = page.locator("#picture").get_attribute("alt") or ""
    assert "in progress" in alt and "a red circle" in alt
    shot(page, "painting")

    assert wait_finished(page) == "succeeded"
    shot(page, "done")
    seen = page.evaluate("window.__seen")
    values = seen["progress"]
    assert values == sorted(values), f"the progress bar went backwards: {values}"
    assert len({v for v in values if 0 < v < 200}) >= 3, f"the bar did not advance in steps: {values}"
    assert values[-1] == 200
    frames = [p["hash"] for p in seen["pictures"] if p["kind"] == "frame"]
    changes = sum(1 for a, b in itertools.pairwise(frames) if a != b)
    assert changes >= 2, f"the live picture changed {changes} times over {len(frames)} frames"
    assert seen["pictures"][-1]["kind"] == "result"
    expect(page.locator("#picture")).to_have_attribute("alt", re.compile("^Finished painting of"))
    expect(page.locator("#job-status")).to_contain_text("Finished")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()

    job = job_view(page_url, job_id)
    expect(page.locator("#params-list")).to_contain_text(str(job["seed"]))
    expect(page.locator("#params-list")).to_contain_text("64 × 64")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download PNG", exact=True).click()
    download = download_info.value
    data = Path(download.path()).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert data == httpx.get(f"{page_url}/v1/jobs/{job_id}/result", timeout=10).content
    assert download.suggested_filename == f"artgen-{job_id[:8]}-seed{job['seed']}.png"

    with page.expect_download() as timelapse_info:
        page.get_by_role("button", name="Download time-lapse", exact=True).click()
    webp = Path(timelapse_info.value.path()).read_bytes()
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    assert getattr(Image.open(io.BytesIO(webp)), "n_frames", 1) > 2

    # The gallery lists it first, finished, with a thumbnail that has alt text.
    first = page.locator("#gallery li").first
    expect(first).to_contain_text("a red circle on a blue background")
    expect(first.locator(".badge")).to_have_text("succeeded")
    expect(first.locator("img")).to_have_attribute("alt", re.compile("Painting of"))


def test_cancel_while_painting(page: Page, page_url: str, shot: Shot) -> None:
    fill_job(page, "blue and yellow stripes", size=64, iterations=1000)
    job_id = submit(page)
    page.wait_for_function(
        "Number(document.getElementById('progress').getAttribute('aria-valuenow')) >= 10", timeout=60_000
    )
    page.get_by_role("button", name="Cancel", exact=True).click()
    assert wait_finished(page, 30_000) == "canceled"
    expect(page.locator("#job-status")).to_contain_text("Canceled at iteration")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()
    expect(page.get_by_role("link", name="Download PNG", exact=True)).to_be_hidden()
    expect(page.get_by_role("button", name="Paint again with this seed", exact=True)).to_be_visible()
    job = job_view(page_url, job_id)
    assert job["status"] == "canceled"
    assert job["iteration"] < 1000
    shot(page, "canceled")


def test_text_and_start_picture(
    page: Page, page_url: str, browser_stack: Stack, tmp_path: Path, shot: Shot
) -> None:
    picture = start_picture(tmp_path / "start.png")
    page.locator("#init-image").set_input_files(str(picture))
    preview = page.get_by_role("img", name="Start picture: start.png", exact=True)
    expect(preview).to_be_visible()
    page.get_by_role("button", name="Remove start picture", exact=True).click()
    expect(preview).to_be_hidden()
    expect(page.locator("#drop-empty")).to_be_visible()

    # Dropping a file on the zone works as well as choosing one.
    data = list(picture.read_bytes())
    transfer = page.evaluate_handle(
        """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        data,
    )
    page.locator("#dropzone").dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.get_by_role("img", name="Start picture: dropped.png", exact=True)).to_be_visible()

    fill_job(page, "a white circle on a black background", size=64, iterations=30)
    page.get_by_label("Keep start picture", exact=True).fill("0.5")
    job_id = submit(page)
    shot(page, "submitted")
    assert wait_finished(page) == "succeeded"
    # The worker painted from the uploaded picture: the record says so, and the stored pixels are the file's.
    keys = Keys(browser_stack.prefix)
    record = browser_stack.client.hgetall(keys.job(job_id))
    assert record[b"has_init_image"] == b"1"
    assert float(record[b"init_weight"]) == 0.5
    stored = Image.open(io.BytesIO(browser_stack.client.get(keys.init_image(job_id))))
    assert stored.convert("RGB").tobytes() == Image.open(picture).convert("RGB").tobytes()
    assert job_view(page_url, job_id)["status"] == "succeeded"


def test_bad_input_is_explained(page: Page, page_url: str, shot: Shot) -> None:
    total_before = httpx.get(f"{page_url}/v1/jobs?limit=1", timeout=10).json()["total"]
    fill_job(page, "cat:1.2.3", size=64, iterations=10)
    page.get_by_role("button", name="Paint", exact=True).click()
    error = page.locator("#form-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Please check these settings")
    expect(error).to_contain_text("malformed weight '1.2.3'")
    expect(page.get_by_label("Prompt", exact=True)).to_have_attribute("aria-invalid", "true")
    shot(page, "bad-prompt")

    # Past the limit, as a script would send it: the browser's own max is taken away first.
    page.get_by_label("Prompt", exact=True).fill("a red circle")
    page.locator("#iterations").evaluate("input => { input.removeAttribute('max'); input.value = '5000'; }")
    page.get_by_role("button", name="Paint", exact=True).click()
    expect(error).to_contain_text("iterations must be from 1 to 1000 (got 5000)")
    expect(error).not_to_contain_text("malformed")
    expect(page.get_by_label("Iterations", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Prompt", exact=True)).not_to_have_attribute("aria-invalid", "true")
    assert "[object Object]" not in error.inner_text()
    shot(page, "too-many-iterations")
    assert httpx.get(f"{page_url}/v1/jobs?limit=1", timeout=10).json()["total"] == total_before


def test_polls_when_the_event_stream_fails(page: Page, shot: Shot) -> None:
    """With the SSE route unreachable the page polls /frame (If-None-Match) and the job view instead."""
    page.route(re.compile(r".*/v1/jobs/[0-9a-f]+/events$"), lambda route: route.abort())
    conditional: list[str] = []
    page.on(
        "request",
        lambda request: (
            conditional.append(request.headers.get("if-none-match", ""))
            if request.url.endswith("/frame")
            else None
        ),
    )
    page.evaluate(WATCH_JS)
    fill_job(page, "a red circle on a blue background", size=64, iterations=120)
    submit(page)
    assert wait_finished(page) == "succeeded"
    expect(page.locator("#frame")).to_have_attribute("data-transport", "polling")
    seen = page.evaluate("window.__seen")
    assert len({v for v in seen["progress"] if 0 < v < 120}) >= 2, seen["progress"]
    assert len({p["hash"] for p in seen["pictures"] if p["kind"] == "frame"}) >= 2
    assert any(tag for tag in conditional), "frames were never polled with If-None-Match"
    shot(page, "polled")


def test_polls_when_the_api_serves_its_most_watchers(browser: Browser, tmp_path: Path, shot: Shot) -> None:
    """Beyond ARTGEN_MAX_WATCHERS the events route answers 503 + Retry-After: the page follows by polling."""
    stack = Stack(tmp_path / "stack")  # no worker: the jobs stay queued
    try:
        url = stack.start_api(max_watchers="1")
        body = {"prompt": "a painting someone else watches", "width": 64, "height": 64}
        other = httpx.post(f"{url}/v1/jobs", json=body, timeout=10).json()
        with (
            httpx.Client(timeout=30) as client,
            client.stream("GET", f"{url}/v1/jobs/{other['id']}/events") as held,  # the one place taken
        ):
            assert held.status_code == 200
            errors: list[str] = []
            page = open_page(browser, url, errors)
            statuses: list[int] = []
            page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/events") else None)
            try:
                fill_job(page, "a red circle on a blue background", size=64, iterations=20)
                job_id = submit(page)
                expect(page.locator("#frame")).to_have_attribute("data-transport", "polling")
                assert 503 in statuses, statuses
                expect(page.locator("#progress-eta")).to_have_text("2nd in the queue")  # learned by polling
                shot(page, "polling")
                page.get_by_role("button", name="Cancel", exact=True).click()
                assert wait_finished(page, 10_000) == "canceled"
                assert job_view(url, job_id)["status"] == "canceled"
            finally:
                page.context.close()
            assert not errors, errors
    finally:
        stack.close()


def test_reopen_from_address_and_gallery(page: Page, browser: Browser, page_url: str, shot: Shot) -> None:
    fill_job(page, "a white circle on a black background", size=64, iterations=20)
    job_id = submit(page)
    assert wait_finished(page) == "succeeded"
    seed = job_view(page_url, job_id)["seed"]

    # A reload keeps the painting on the canvas.
    page.reload()
    expect(page.locator("#picture")).to_have_attribute("data-kind", "result")
    expect(page.locator("#params-list")).to_contain_text(str(seed))

    # Another painting, then the first one again from the gallery.
    fill_job(page, "blue and yellow stripes", size=64, iterations=20)
    second = submit(page)
    assert wait_finished(page) == "succeeded"
    entry = page.locator("#gallery li", has_text="a white circle on a black background").first
    entry.get_by_role("button", name=re.compile(r"^Open")).click()
    page.wait_for_function(f"location.hash === '#job={job_id}'")
    expect(page.locator("#picture")).to_have_attribute("data-kind", "result")
    expect(page.locator("#params-list")).to_contain_text(str(seed))
    expect(entry.get_by_role("button", name=re.compile(r"^Open"))).to_have_attribute("aria-current", "true")
    ids = page.locator("#gallery li").evaluate_all("items => items.map(li => li.dataset.id)")
    assert ids.index(second) < ids.index(job_id), "the gallery is not newest first"

    # Paint again with this seed: same prompt and seed, a new job.
    page.get_by_role("button", name="Paint again with this seed", exact=True).click()
    page.wait_for_function(f"location.hash.startsWith('#job=') && location.hash !== '#job={job_id}'")
    again = str(page.evaluate("location.hash.slice(5)"))
    assert wait_finished(page) == "succeeded"
    repeat = job_view(page_url, again)
    assert (repeat["seed"], repeat["prompt"]) == (seed, "a white circle on a black background")
    shot(page, "repainted")


def test_delete_from_the_gallery(page: Page, page_url: str, browser_stack: Stack, shot: Shot) -> None:
    fill_job(page, "a red circle on a blue background", size=64, iterations=10)
    kept = submit(page)
    assert wait_finished(page) == "succeeded"
    fill_job(page, "a white circle on a black background", size=64, iterations=10)
    job_id = submit(page)
    assert wait_finished(page) == "succeeded"
    entry = page.locator(f"#gallery li[data-id='{job_id}']")
    expect(entry.locator("img")).to_be_visible()
    delete = entry.get_by_role("button", name="Delete “a white circle on a black background”")

    # Dismissing the confirmation keeps it.
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete.click()
    expect(entry).to_have_count(1)
    assert httpx.get(f"{page_url}/v1/jobs/{job_id}", timeout=10).status_code == 200

    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    expect(entry).to_have_count(0)
    expect(page.locator("#job-status")).to_have_text("That painting was deleted.")
    assert page.evaluate("location.hash") == ""
    shot(page, "deleted")
    assert httpx.get(f"{page_url}/v1/jobs/{job_id}", timeout=10).status_code == 404
    assert list(browser_stack.client.scan_iter(match=f"*{job_id}*")) == []
    results = browser_stack.root / "results"
    assert not (results / job_id).exists() and (results / kept).exists()
    page.reload()
    expect(page.locator(f"#gallery li[data-id='{kept}']")).to_have_count(1)
    expect(page.locator(f"#gallery li[data-id='{job_id}']")).to_have_count(0)


def test_phone_width_and_keyboard(browser: Browser, page_url: str, shot: Shot) -> None:
    errors: list[str] = []
    page = open_page(browser, page_url, errors, viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at phone width ({width} px)"
        # Keyboard only: a chip, then Ctrl+Enter from the prompt box.
        page.get_by_role("button", name="blue and yellow stripes", exact=True).focus()
        page.keyboard.press("Enter")
        expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
        expect(page.get_by_label("Prompt", exact=True)).to_have_value("blue and yellow stripes")
        page.get_by_label("Iterations", exact=True).fill("20")
        page.get_by_label("Width", exact=True).fill("64")
        page.get_by_label("Height", exact=True).fill("64")
        page.get_by_label("Prompt", exact=True).focus()
        page.keyboard.press("Control+Enter")
        page.wait_for_function("location.hash.startsWith('#job=')")
        assert wait_finished(page) == "succeeded"
        # Tab reaches the download link and it has a visible focus ring.
        link = page.get_by_role("link", name="Download PNG", exact=True)
        for _ in range(60):
            page.keyboard.press("Tab")
            if link.evaluate("el => el === document.activeElement"):
                break
        else:
            pytest.fail("Tab never reached the Download PNG link")
        outline = link.evaluate("el => getComputedStyle(el).outlineStyle")
        assert outline != "none"
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at phone width ({width} px)"
        missing_alt = page.evaluate(
            "[...document.images].filter(i => !i.hidden && i.getAttribute('src') && !i.alt).length"
        )
        assert missing_alt == 0
        shot(page, "phone")
    finally:
        page.context.close()
    assert not errors, errors


def test_api_key(browser: Browser, keyed_url: str, shot: Shot) -> None:
    """With keys on, the page asks for one, keeps it, and follows the job over an authorised stream."""
    errors: list[str] = []
    page = open_page(browser, keyed_url, errors)
    try:
        expect(page.locator("#gallery-error")).to_contain_text("API key")
        fill_job(page, "a red circle on a blue background", size=64, iterations=40)
        page.get_by_role("button", name="Paint", exact=True).click()
        expect(page.locator("#form-error")).to_contain_text("needs an API key")
        page.get_by_label("API key", exact=True).fill(API_KEY)
        page.get_by_label("API key", exact=True).press("Tab")
        job_id = submit(page)
        assert wait_finished(page) == "succeeded"
        expect(page.locator("#frame")).to_have_attribute("data-transport", "events")
        expect(page.locator("#gallery li").first).to_contain_text("a red circle on a blue background")
        assert page.evaluate("localStorage.getItem('artgen.apiKey')") == API_KEY
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert job_view(keyed_url, job_id, **headers)["status"] == "succeeded"
        shot(page, "keyed")
    finally:
        page.context.close()
    assert not errors, errors


def test_queued_without_worker(browser: Browser, workerless_url: str, shot: Shot) -> None:
    """A job that cannot start is not a silent stall: the page says no worker is alive; cancel still works."""
    errors: list[str] = []
    page = open_page(browser, workerless_url, errors)
    try:
        fill_job(page, "a red circle on a blue background", size=64, iterations=20)
        job_id = submit(page)
        expect(page.locator("#job-status")).to_contain_text("next in line")
        expect(page.locator("#progress-eta")).to_have_text("1st in the queue")
        expect(page.locator("#job-status")).to_contain_text("No painter is running right now", timeout=20_000)
        expect(page.locator("#job-status")).to_contain_text("no worker is alive")
        shot(page, "stalled")
        page.get_by_role("button", name="Cancel", exact=True).click()
        assert wait_finished(page, 10_000) == "canceled"
        expect(page.locator("#job-status")).to_have_text("Canceled at iteration 0 of 20.")
        assert job_view(workerless_url, job_id)["status"] == "canceled"
    finally:
        page.context.close()
    assert not errors, errors


def test_the_form_takes_the_chosen_models_defaults(browser: Browser, tmp_path: Path) -> None:
    """Choosing a model fills size, iterations and cutouts with its defaults from /v1/config."""
    stack = Stack(tmp_path / "stack")
    try:
        url = stack.start_api(worker_models="toyworld,tiny")
        defaults = httpx.get(f"{url}/v1/config", timeout=10).json()["model_defaults"]
        assert defaults["toyworld"] != defaults["tiny"]
        errors: list[str] = []
        page = open_page(browser, url, errors)
        try:
            for model in ("toyworld", "tiny", "toyworld"):  # the first is the default model
                page.get_by_label("Model", exact=True).select_option(model)
                own = defaults[model]
                expect(page.get_by_label("Width", exact=True)).to_have_value(str(own["size"]))
                expect(page.get_by_label("Height", exact=True)).to_have_value(str(own["size"]))
                expect(page.get_by_label("Iterations", exact=True)).to_have_value(str(own["iterations"]))
                expect(page.get_by_label("Cutouts", exact=True)).to_have_value(str(own["cutn"]))
        finally:
            page.context.close()
        assert not errors, errors
    finally:
        stack.close()


# Records, inside the page, every stage line and every set of per-prompt bars the canvas shows.
STAGES_JS = """
() => {
  const seen = {stages: [], bars: []};
  window.__stages = seen;
  const stage = document.getElementById("progress-stage");
  new MutationObserver(() => seen.stages.push(stage.textContent))
    .observe(stage, {childList: true, characterData: true, subtree: true});
  const list = document.getElementById("prompt-losses");
  new MutationObserver(() => seen.bars.push(
    [...list.querySelectorAll(".prompt-loss")].map((li) => ({
      text: li.querySelector(".prompt-loss-text").textContent,
      width: parseFloat(li.querySelector(".prompt-loss-fill").style.width),
      value: li.querySelector(".prompt-loss-value").textContent,
    }))
  )).observe(list, {childList: true});
}
"""


def test_a_schedule_shows_its_stage_and_per_prompt_bars(page: Page, page_url: str, shot: Shot) -> None:
    fill_job(page, "a red circle | blue:-0.5 ^ a green square", size=64, iterations=60)
    page.get_by_label("Change stage every", exact=True).fill("30")
    page.get_by_label("Optimizer", exact=True).select_option("nadam")
    page.get_by_label("Start from", exact=True).select_option("gradient")
    page.evaluate(STAGES_JS)
    job_id = submit(page)

    stage_line = page.locator("#progress-stage")
    expect(stage_line).to_have_text("Stage 1 of 2: a red circle | blue:-0.5", timeout=60_000)
    bars = page.locator("#prompt-losses .prompt-loss")
    expect(bars).to_have_count(2)
    expect(bars.nth(0).locator(".prompt-loss-text")).to_have_text("a red circle")
    expect(bars.nth(1).locator(".prompt-loss-text")).to_have_text("blue ×-0.5")
    shot(page, "stage-1")
    expect(stage_line).to_have_text("Stage 2 of 2: a green square", timeout=60_000)
    expect(bars).to_have_count(1)
    shot(page, "stage-2")
    assert wait_finished(page) == "succeeded"

    seen = page.evaluate("window.__stages")
    stages = [text for text in seen["stages"] if text]
    assert stages[0].startswith("Stage 1 of 2") and stages[-1].startswith("Stage 2 of 2"), stages
    assert all(0 < bar["width"] <= 100 for row in seen["bars"] for bar in row), seen["bars"]
    assert {len(row) for row in seen["bars"] if row} == {1, 2}
    job = job_view(page_url, job_id)
    assert (job["optimizer"], job["init"], job["change_every"]) == ("nadam", "gradient", 30)
    assert job["stage"] == {"index": 1, "count": 2, "text": "a green square"}
    assert [row["text"] for row in job["losses"]] == ["a green square"]
    # The last bars shown are the job's own distances.
    assert seen["bars"][-1][0]["value"] == f"{job['losses'][0]['distance']:.3f}"
    expect(page.locator("#params-list")).to_contain_text("nadam")
    expect(page.locator("#params-list")).to_contain_text("2, changing every 30 iterations")


def test_carry_a_schedule_on_and_follow_the_chain(page: Page, page_url: str, shot: Shot) -> None:
    fill_job(page, "a red circle ^ a green square", size=64, iterations=20)
    page.get_by_label("Change stage every", exact=True).fill("10")
    parent_id = submit(page)
    assert wait_finished(page) == "succeeded"
    chain = page.locator("#chain")
    expect(chain).to_be_visible()
    expect(page.locator("#manifest-link")).to_be_visible()
    # The prompt it carries on under by default: the schedule's last stage.
    expect(page.get_by_label("New prompt (optional)")).to_have_attribute("placeholder", "a green square")

    # A bad count is explained in words, and no job is made.
    page.get_by_label("More iterations", exact=True).fill("0")
    page.get_by_role("button", name="Carry it on").click()
    expect(page.locator("#extend-error")).to_contain_text("iterations")
    assert page.evaluate("location.hash.slice(5)") == parent_id

    page.get_by_label("More iterations", exact=True).fill("12")
    page.get_by_label("New prompt (optional)").fill("a blue whale | a storm:-0.5")
    page.get_by_role("button", name="Carry it on").click()
    page.wait_for_function(f"location.hash.startsWith('#job=') && location.hash !== '#job={parent_id}'")
    child_id = str(page.evaluate("location.hash.slice(5)"))
    expect(page.locator("#chain-links")).to_contain_text(f"Continues {parent_id[:8]} from iteration 20.")
    assert wait_finished(page) == "succeeded"
    bars = page.locator("#prompt-losses .prompt-loss")
    expect(bars).to_have_count(2)
    expect(bars.nth(0).locator(".prompt-loss-text")).to_have_text("a blue whale")
    expect(bars.nth(1).locator(".prompt-loss-text")).to_have_text("a storm ×-0.5")
    expect(page.locator("#progress-iter")).to_have_text("32 / 32 iterations")
    shot(page, "extended")

    child = job_view(page_url, child_id)
    assert (child["parent"], child["start_iteration"], child["iterations"]) == (parent_id, 20, 32)
    manifest = page.evaluate(
        "async () => (await fetch(document.getElementById('manifest-link').href)).json()"
    )
    assert [s["job_id"] for s in manifest["segments"]] == [parent_id, child_id]

    # Back along the chain: the parent lists its child.
    page.locator("#chain-links a", has_text=parent_id[:8]).click()
    page.wait_for_function(f"location.hash === '#job={parent_id}'")
    expect(page.locator("#chain-links")).to_contain_text(f"Carried on in {child_id[:8]}.")
    shot(page, "parent-with-child")
