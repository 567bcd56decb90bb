"""The live page in a real browser: a real `pipeline run` on the session's broker and Triton
(durable user state on, so restores show), fed events for a few seconds; headless Chromium
(Debian's `chromium`, installed by scripts/setup.sh) loads the page twice, once for its DOM
and once for a screenshot. The charts must hold points (each marks how many it drew) and
show them: pixels of their lines' colours inside their plots.

``LIVE_PAGE_SCREENSHOT=docs/live_page.png pytest tests/integration/test_live_page.py``
writes the screenshot the docs show."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from pipeline import kafka_clients
from pipeline.devstack.dev import live_events
from pipeline.devstack.stack import EmbeddedStack
from pipeline.devstack.worker import PipelineProcess
from pipeline.recsys.generator import GeneratorConfig
from pipeline.topology.schema import Topology
from tests.integration.harness import fresh_topology

WINDOW = (1280, 860)  # CSS px, at a device scale of 1: the screenshot's pixels
FEED_S = 6.0  # about 6 points a chart (one a second)
RATE = 300.0  # events/s
BROWSER_TIMEOUT_S = 30.0
CHARTS = ("throughput", "latency", "backlog")
MIN_LINE_PIXELS = 150  # lines across a few hundred pixels of plot, 2 px thick
BASELINE_ROWS = 4  # a series at zero is drawn on the plot's bottom edge: not counted


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is missing: run scripts/setup.sh (it installs Debian's chromium package)")
    return found


def browse(args: list[str], url: str, profile: Path) -> str:
    """One headless Chromium run, bounded; on a timeout its whole process group is killed
    (the browser's renderer and zygote are children of its own)."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    browser = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        out, _ = browser.communicate(timeout=BROWSER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.communicate()
        raise AssertionError(f"chromium did not finish within {BROWSER_TIMEOUT_S} s") from None
    with contextlib.suppress(ProcessLookupError):  # a helper left in its group, if any
        os.killpg(browser.pid, signal.SIGKILL)
    assert browser.returncode == 0, f"chromium exited {browser.returncode}"
    return out


class PageParts(HTMLParser):
    """Each element with an id: its attributes; each tbody with an id: its rows' cells."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self._body: str | None = None
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "id" in values:
            self.by_id[values["id"]] = values
        if tag == "tbody" and "id" in values:
            self._body = values["id"]
            self.rows[self._body] = []
        elif tag == "tr" and self._body is not None:
            self.rows[self._body].append([])
        elif tag == "td" and self._body is not None:
            self.rows[self._body][-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._body = None
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell and self._body is not None:
            self.rows[self._body][-1][-1] += data


async def feed(topology: Topology, stop: asyncio.Event) -> int:
    """Events at RATE a second until ``stop``; how many were sent."""
    producer = kafka_clients.producer(topology.broker, client_suffix="-test", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        started = time.monotonic()
        for event in live_events(GeneratorConfig(seed=27), 100_000):
            if stop.is_set():
                break
            event["ts"] = time.time_ns() // 1_000_000
            await producer.send(
                topology.source.topics[0], orjson.dumps(event), key=str(event["user_id"]).encode()
            )
            sent += 1
            await asyncio.sleep(max(0.0, sent / RATE - (time.monotonic() - started)))
    finally:
        await asyncio.wait_for(producer.stop(), 10)
    return sent


def line_pixels(image: np.ndarray, plot: str) -> int:
    """Coloured pixels inside the plot's rectangle, above its bottom edge: the lines of
    values above zero (the background is white, the grid lines grey)."""
    left, top, width, height = (int(v) for v in plot.split(","))
    area = image[top : top + height - BASELINE_ROWS, left : left + width, :3].astype(np.int32)
    return int((area.max(axis=2) - area.min(axis=2) > 60).sum())


async def test_the_live_page_draws_a_real_runs_charts(
    stack: EmbeddedStack, tmp_path: Path, repo_root: Path
) -> None:
    chromium()  # missing: fail now, naming the script that installs it
    topology = fresh_topology(stack, state={"dir": str(tmp_path / "state")})
    proc = PipelineProcess(topology, tmp_path)
    url = f"http://127.0.0.1:{proc.metrics_port}/"
    shot = tmp_path / "live_page.png"
    stop = asyncio.Event()
    feeding: asyncio.Task[int] | None = None
    try:
        await asyncio.to_thread(proc.start_ready, 60)
        feeding = asyncio.create_task(feed(topology, stop))
        await asyncio.sleep(FEED_S)  # still feeding while the browser looks
        started = time.monotonic()
        dom, _ = await asyncio.gather(  # two browsers at once: each mostly waits on its start
            asyncio.to_thread(browse, ["--dump-dom"], url, tmp_path / "profile-dom"),
            asyncio.to_thread(browse, [f"--screenshot={shot}"], url, tmp_path / "profile-shot"),
        )
        browsing_s = time.monotonic() - started
    finally:
        stop.set()
        if feeding is not None:
            await asyncio.wait_for(asyncio.gather(feeding, return_exceptions=True), 15)
        await asyncio.to_thread(proc.stop)
    print(f"\nLIVE PAGE: two Chromium loads at once in {browsing_s:.1f} s")
    if target := os.environ.get("LIVE_PAGE_SCREENSHOT"):
        shutil.copyfile(shot, repo_root / target)

    page = PageParts()
    page.feed(dom)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    for name in CHARTS:
        chart = page.by_id[f"chart-{name}"]
        assert int(chart["data-points"]) >= FEED_S / 2, (name, chart)
        assert int(chart["data-nonzero"]) >= FEED_S / 2, (name, chart)
        pixels = line_pixels(image, chart["data-plot"])
        assert pixels >= MIN_LINE_PIXELS, f"{name}: {pixels} pixels of lines above zero"
    assert {row[0] for row in page.rows["lanes"]} == {"purchases", "browsing"}
    assert len(page.rows["partitions"]) == 4  # the input topic's partitions, with their lag
    assert page.by_id["breaker-pill"] and "breaker closed" in dom
    assert "partitions restoring" in dom  # durable state: the restores' section
