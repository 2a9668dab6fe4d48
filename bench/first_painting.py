"""A newcomer's first painting: the page's first example prompt on the page's defaults, timed.

Start the service first (`make run`), then:

    .venv/bin/python bench/first_painting.py --url http://127.0.0.1:8000 --shot docs/first-painting.png

It opens the page in Debian's Chromium (`/usr/bin/chromium`), clicks the example "a red circle on a blue
background", presses Paint without touching any other field, and prints the seconds from the click to
the finished picture, with the job's size, iterations, cutouts and its own run and queue times.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PROMPT = "a red circle on a blue background"


def main() -> None:
    """Paint once through the page and print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--shot", type=Path, help="save a screenshot of the finished page here")
    parser.add_argument("--timeout-s", type=float, default=600)
    args = parser.parse_args()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(args.url)
        page.get_by_role("button", name=PROMPT, exact=True).click()
        page.wait_for_function("document.getElementById('iterations').value !== ''")
        with page.expect_response(
            lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST"
        ) as sent:
            started = time.perf_counter()
            page.get_by_role("button", name="Paint", exact=True).click()
        job = sent.value.json()
        page.wait_for_function(
            "document.getElementById('job-status').textContent.includes('Finished')",
            timeout=args.timeout_s * 1000,
        )
        elapsed = time.perf_counter() - started
        if args.shot:
            page.evaluate("window.scrollTo(0, 0)")  # the page scrolls to the canvas; show it from the top
            page.screenshot(path=str(args.shot))
        browser.close()

    with urllib.request.urlopen(f"{args.url}/v1/jobs/{job['id']}", timeout=10) as response:
        view = json.load(response)
    print(
        json.dumps(
            {
                "seconds_click_to_finished": round(elapsed, 1),
                "model": view.get("model"),
                "size": f"{view.get('width')}x{view.get('height')}",
                "iterations": view.get("iterations"),
                "cutn": view.get("cutn"),
                "queue_wait_s": view.get("queue_wait_s"),
                "run_s": view.get("run_s"),
                "seed": view.get("seed"),
            }
        )
    )


if __name__ == "__main__":
    main()
