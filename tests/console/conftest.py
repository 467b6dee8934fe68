"""The QA console in a real browser: Debian's Chromium, headless, driven by Playwright, against a real
server on 127.0.0.1. Every page a test opens records the requests it makes; none may leave for
another host."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.samples import write_sample_set
from tests.conftest import RunningServer, running_server

CHROMIUM = "/usr/bin/chromium"
ADMIN_TOKEN = "console-admin-7f3"
# Where the README's screenshots come from: `INSPECTION_CONSOLE_SCREENSHOTS=docs/images pytest tests/console`.
SCREENSHOTS_ENV = "INSPECTION_CONSOLE_SCREENSHOTS"
# As the machine's probe starts it: no background connections, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one module's tests. Not longer: Playwright's synchronous API runs an event loop in
    this thread while it is open, and the suite's later `asyncio.run` calls would find it running."""
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (Debian's chromium package; tests/with_services.sh installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the dev extra)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


SERVER_SET = "line2-classifier"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, samples_zip: Path) -> Iterator[RunningServer]:
    """A server of its own for the console's tests, with the admin token set and the classifier's
    samples also kept on the server, as the set `line2-classifier`."""
    sets = tmp_path_factory.mktemp("sample-sets")
    shutil.copy(samples_zip, sets / f"{SERVER_SET}.zip")
    folder = tmp_path_factory.mktemp("console")
    with running_server(folder, admin_token=ADMIN_TOKEN, sample_sets_dir=sets) as running:
        yield running


class Page:
    """A browser page on the console, with every request it made."""

    def __init__(self, page: object, server: RunningServer) -> None:
        self.page = page
        self.server = server
        self.requests: list[str] = []

    def open(self, fragment: str) -> None:
        self.page.goto(f"{self.server.url}/console/#{fragment}")

    def testid(self, name: str):
        return self.page.get_by_test_id(name)

    def text(self, name: str) -> str:
        return self.testid(name).inner_text().strip()

    def enter_token(self, token: str = ADMIN_TOKEN) -> None:
        self.testid("token-button").click()
        self.testid("token-input").fill(token)
        self.testid("token-save").click()
        self.page.wait_for_function("() => document.getElementById('token-state').textContent.includes('entered')")

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"console-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def console(browser, server: RunningServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    opened = Page(page, server)
    page.on("request", lambda request: opened.requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    # Nothing left for another host (a blob: address is a frame the page read from a file the user
    # chose, in memory), and the script never failed.
    own = (f"{server.url}/", f"blob:{server.url}/")
    foreign = [url for url in opened.requests if not url.startswith(own)]
    assert foreign == [], foreign
    assert errors == [], errors


@pytest.fixture(scope="module")
def samples_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled classification samples, zipped in the layout `python -m export.samples` writes."""
    folder = tmp_path_factory.mktemp("samples")
    samples = write_sample_set(folder / "samples", "classification", count=40, seed=31_000, width=320, height=240)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(samples.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(samples).as_posix())
    archive_path = folder / "classifier-samples.zip"
    archive_path.write_bytes(buffer.getvalue())
    return archive_path
