"""The web page of attngan.serve end to end in headless Chromium (the system's, driven by Playwright).

Needs Debian's ``chromium`` package and the ``playwright`` Python package (no browser download:
``playwright install`` is never run). Skipped with a reason when either is missing.

Also a script that takes the README's screenshot of the page with a trained model::

    python tests/test_serve_browser.py --checkpoint runs/00001-shapes-attngan --out docs/serve-screenshot.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

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
TIMEOUT_MS = 20_000  # any single browser action or wait


def decode_png(data_url: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def chromium_path() -> str | None:
    """``$ATTNGAN_CHROMIUM``, else ``chromium`` on the PATH, else ``/usr/bin/chromium``; None if absent."""
    for candidate in (os.environ.get("ATTNGAN_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def tiny_pipeline():
    from attngan.config import PRESETS
    from attngan.data.synthetic import shapes_vocabulary
    from attngan.nn import Generator, TextEncoder
    from attngan.pipeline import AttnGANPipeline

    torch.manual_seed(0)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    te = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab)))
    return AttnGANPipeline(te, Generator(tiny.generator), vocab)


class PeakedMaps:
    """The pipeline with every word's attention map replaced by a Gaussian bump at its own place (an untrained
    model's maps are nearly flat, and their min-max scaled overlays are noise in any implementation)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        for maps in out.attention_maps:
            for k, attn in enumerate(maps):  # (T, h, w)
                t, h, w = attn.shape
                ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
                bumps = [torch.exp(-((ys - (3 + 5 * i) % h) ** 2 + (xs - (2 + 7 * i) % w) ** 2) / 8.0) for i in range(t)]
                maps[k] = torch.stack([(0.5 + i) * b / t for i, b in enumerate(bumps)])
        return out


class Browser:
    """A Chromium page that may only reach ``base_url`` (every other request is aborted and recorded)."""

    def __init__(self, playwright, executable: str, base_url: str, width: int = 1000) -> None:
        self.browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        self.page = self.browser.new_page(viewport={"width": width, "height": 600})
        self.page.set_default_timeout(TIMEOUT_MS)
        self.blocked: list[str] = []
        self.errors: list[str] = []

        def route(r):
            url = r.request.url
            if url.startswith(base_url) or url.startswith("data:"):
                r.continue_()
            else:
                self.blocked.append(url)
                r.abort()

        self.page.route("**/*", route)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))

    def close(self) -> None:
        self.browser.close()


def draw(page, caption: str, seed: int | None) -> None:
    page.fill("#caption", caption)
    page.fill("#seed", "" if seed is None else str(seed))
    page.click("#generate")


# ------------------------------------------------------------------------------------------------ test


@pytest.fixture(scope="module")
def browser_env():
    pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
    pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium executable (apt-get install chromium, or set ATTNGAN_CHROMIUM)")
    from attngan.serve import BackgroundServer, create_app

    pipe = PeakedMaps(tiny_pipeline())
    with (
        BackgroundServer(create_app(pipe, model_name="tiny-untrained")) as server,
        sync_api.sync_playwright() as pw,
    ):
        try:
            browser = Browser(pw, executable, server.url)
        except Exception as exc:  # e.g. a chromium that cannot start in this container
            pytest.skip(f"chromium at {executable} could not be started by playwright: {exc}")
        try:
            yield server, browser, pipe
        finally:
            browser.close()


def test_page_draws_images_and_word_maps(browser_env, tmp_path):
    server, browser, pipe = browser_env
    page = browser.page
    page.goto(server.url + "/")

    # Example captions come from /health and fill the text box.
    page.wait_for_selector(".example")
    examples = page.locator(".example").all_inner_texts()
    assert examples[0] == "a small red circle at the top left" and len(examples) >= 3
    page.locator(".example").nth(1).click()
    assert page.input_value("#caption") == examples[1]
    assert "tiny-untrained" in page.inner_text("#model") and "16×16, 32×32" in page.inner_text("#model")

    caption = "a small red zorblax circle at the top left"
    draw(page, caption, seed=7)
    page.wait_for_selector(".stage-image")
    page.wait_for_function(
        "[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"
    )

    # Every stage's image, decoded at its true size, and exactly what the API returns for the same request.
    sizes = page.eval_on_selector_all(".stage-image", "els => els.map(e => e.naturalWidth)")
    assert sizes == [16, 32]
    shown = page.eval_on_selector_all(".stage-image", "els => els.map(e => e.src)")
    req = urllib.request.Request(
        server.url + "/api/v1/generate",
        data=json.dumps({"caption": caption, "seed": 7}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as res:
        api = json.loads(res.read())
    assert shown == [s["image"] for s in api["images"][0]["stages"]]

    # The top words of the attention stage (Eq. 15) with their maps, as Fig. 1.
    labels = page.locator(".word-label").all_inner_texts()
    assert labels == [w["word"] for w in api["images"][0]["attention"][0]["words"]] and len(labels) == 5
    assert set(labels) <= set(api["tokens"])
    # Each map arrives on its 16 x 16 grid and the page draws it, upsampled and tinted, on a 64 px canvas: as
    # the server's own overlay (`"overlays": true`) up to the browser's resampling and blur.
    assert page.eval_on_selector_all(".word-map", "els => els.map(e => e.width)") == [64] * 5
    page.wait_for_function(
        "[...document.querySelectorAll('canvas.word-map')].every(c => "
        "c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0))"
    )
    drawn = page.eval_on_selector_all(
        "canvas.word-map", "els => els.map(c => Array.from(c.getContext('2d').getImageData(0, 0, 64, 64).data))"
    )
    req = urllib.request.Request(
        server.url + "/api/v1/generate",
        data=json.dumps({"caption": caption, "seed": 7, "overlays": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as res:
        tinted = json.loads(res.read())["images"][0]["attention"][0]["words"]
    for pixels, word in zip(drawn, tinted):
        browser_rgb = np.asarray(pixels, dtype=np.float64).reshape(64, 64, 4)[..., :3]
        server_rgb = decode_png(word["overlay"]).astype(np.float64)
        assert np.abs(browser_rgb - server_rgb).mean() < 3, word["word"]  # of 255 levels (0.4-0.45 measured)
        red_b, red_s = (a[..., 0] - a[..., 1:].mean(axis=-1) for a in (browser_rgb, server_rgb))  # the tint
        assert np.corrcoef(red_b.ravel(), red_s.ravel())[0, 1] > 0.9, word["word"]
    assert page.locator(".token.unknown").all_inner_texts() == ["zorblax"]
    assert "seed 7" in page.inner_text(".result-image h2") and "done in" in page.inner_text("#status")

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A caption without a known word: the server's message is shown and the page keeps working.
    draw(page, "zorblax quux", seed=None)
    page.wait_for_selector("#error", state="visible")
    assert "no word in the vocabulary" in page.inner_text("#error")
    draw(page, "a green triangle", seed=3)
    page.wait_for_function("document.querySelector('.result-image h2').textContent.includes('seed 3')")
    assert not page.is_visible("#error")

    assert browser.blocked == []  # the page asked for nothing outside the server
    # The only console error is Chromium's note on the refused caption's 422; no script error.
    assert [e for e in browser.errors if "status of 422" not in e] == []


def test_docs_page_lists_the_operations_without_the_internet(browser_env):
    server, browser, _ = browser_env
    browser.blocked.clear()
    page = browser.page
    page.goto(server.url + "/docs")
    text = page.inner_text("body")
    for operation in ("POST /api/v1/generate", "POST /api/v1.0/bird", "GET /health"):
        assert operation in " ".join(text.split())
    assert "caption" in text and "curl -s " + server.url + "/api/v1/generate" in text
    assert browser.blocked == []  # no script, style sheet or font from a CDN


# ------------------------------------------------------------------------------------------------ script


def screenshot(checkpoint: str | None, out: Path, caption: str, seed: int, width: int) -> None:
    """Serve ``checkpoint`` (tiny untrained model if None), draw ``caption`` in the page, save a PNG."""
    from playwright.sync_api import sync_playwright

    from attngan.pipeline import AttnGANPipeline
    from attngan.serve import BackgroundServer, create_app

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no chromium executable (apt-get install chromium, or set ATTNGAN_CHROMIUM)")
    pipe = AttnGANPipeline.from_pretrained(checkpoint) if checkpoint else tiny_pipeline()
    name = Path(checkpoint).resolve().name if checkpoint else "tiny-untrained"
    with BackgroundServer(create_app(pipe, model_name=name)) as server, sync_playwright() as pw:
        browser = Browser(pw, executable, server.url, width)
        page = browser.page
        page.goto(server.url + "/")
        page.wait_for_selector(".example")
        draw(page, caption, seed)
        page.wait_for_selector(".stage-image")
        page.wait_for_function(
            "[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.png")
        page.screenshot(path=str(tmp), full_page=True)
        os.replace(tmp, out)
        browser.close()
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="model or run folder (default: a tiny untrained model)")
    parser.add_argument("--out", type=Path, default=Path("docs/serve-screenshot.png"))
    parser.add_argument("--caption", default="a small red circle at the top left")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=900)
    args = parser.parse_args()
    screenshot(args.checkpoint, args.out, args.caption, args.seed, args.width)
