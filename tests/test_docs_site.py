"""The documentation site as a reader sees it: `mkdocs build --strict`, served on localhost and
opened in headless Chromium (Debian's `chromium`), which runs the page's JavaScript, MathJax
included. Checked on the rendered DOM:

- an equation is typeset by MathJax (no raw TeX left, and every glyph it draws has its CSS rule:
  a typeset equation without them shows as blank space);
- the algorithms API page has an entry, with its source, for every algorithm `clcore.algorithms`
  exports;
- every `experiments/<name>/README.md` is a page linked from the navigation.

Without Chromium the test is skipped, except under CI (CI=true), where it fails: `.ci/run`
installs it.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

import clcore.algorithms

ROOT = Path(__file__).resolve().parents[1]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=15000",  # virtual time: MathJax finishes without a real wait
]

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    message = "headless Chromium is not installed (`apt-get install chromium`)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: CI must check the rendered site (.ci/run installs it)")
    pytest.skip(message)


class _Page(HTMLParser):
    """What the checks need from a DOM that Chromium serialised (every element closed)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[dict] = []
        self.math: list[dict] = []  # each .arithmatex element: tags and text inside it
        self.headings: dict[str, list[dict]] = {}  # heading id -> the doc objects around it
        self.nav_links: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        for element in self.stack:
            if element.get("math") is not None:
                element["math"]["tags"].append((tag, classes))
        if tag == "details" and "mkdocstrings-source" in classes:  # "Source code in ..."
            for element in self.stack:
                element["has_source"] = True
        if tag == "a" and "md-nav__link" in classes and attrs.get("href"):
            self.nav_links.append(attrs["href"])
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        if tag in VOID:
            return
        element = {"tag": tag, "classes": classes, "has_source": False, "math": None}
        if "arithmatex" in classes:
            element["math"] = {"tags": [], "text": ""}
            self.math.append(element["math"])
        if tag == "style":
            element["style"] = []
            self.styles.append(element["style"])
        if re.fullmatch(r"h[1-6]", tag) and attrs.get("id"):
            self.headings[attrs["id"]] = [e for e in self.stack if "doc-object" in e["classes"]]
        self.stack.append(element)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self.stack:
            if element["math"] is not None:
                element["math"]["text"] += data
            if "style" in element:
                element["style"].append(data)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]]

    def log_request(self, code="-", size="-"):
        self.requests.append((self.path, int(code) if isinstance(code, int) else 0))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    chromium = _chromium()
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
    )
    assert built.returncode == 0, built.stdout + built.stderr

    handler = type("Handler", (_Quiet,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    profiles = tmp_path_factory.mktemp("chromium")

    @functools.cache
    def rendered(path: str) -> _Page:
        profile = profiles / re.sub(r"\W", "_", path or "home")
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", base + path],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
        return _Page(result.stdout)

    try:
        yield {"base": base, "rendered": rendered, "requests": handler.requests}
    finally:
        server.shutdown()
        server.server_close()


def test_equations_are_typeset_by_the_local_mathjax(site):
    page = site["rendered"]("concepts/")
    assert page.math, "concepts.md's equations are not arithmatex math"
    css = "".join("".join(style) for style in page.styles)
    for math in page.math:
        assert any(tag == "mjx-container" for tag, _ in math["tags"]), math
        assert "\\(" not in math["text"] and "\\[" not in math["text"], math["text"]
        # each glyph is drawn by a CSS rule: without it the equation is blank space
        for _, classes in math["tags"]:
            glyph = sorted(c for c in classes if re.fullmatch(r"mjx-c[0-9A-F]+", c))
            if glyph:
                variant = "".join(f".{c}" for c in sorted(classes) if c.startswith("TEX-"))
                assert f"mjx-c.{glyph[0]}{variant}::before" in css, f"no CSS for {glyph[0]}{variant}"
    # MathJax came from the site itself, not from a CDN, and so did its fonts
    assert not [s for s in page.scripts if urllib.parse.urlparse(s).netloc], page.scripts
    assert any(s.endswith("javascripts/mathjax/tex-chtml.js") for s in page.scripts), page.scripts
    assert ("/javascripts/mathjax/tex-chtml.js", 200) in site["requests"]
    assert not [r for r in site["requests"] if r[1] >= 400], site["requests"]


def test_algorithms_page_has_every_algorithm_with_its_source(site):
    page = site["rendered"]("api/algorithms/")
    for name in clcore.algorithms.__all__:
        entries = [
            objects
            for heading, objects in page.headings.items()
            if re.fullmatch(rf"clcore\.algorithms(\.\w+)+\.{re.escape(name)}", heading)
        ]
        assert entries, f"docs/api/algorithms.md has no entry for clcore.algorithms.{name}"
        assert any(objects and "doc-class" in objects[-1]["classes"] for objects in entries), name
        assert any(objects and objects[-1]["has_source"] for objects in entries), f"{name}: no source shown"


def test_every_experiment_page_is_in_the_navigation(site):
    page = site["rendered"]("concepts/")
    linked = {urllib.parse.urljoin(site["base"] + "concepts/", href).split("#")[0] for href in page.nav_links}
    readmes = sorted(ROOT.glob("experiments/*/README.md"))
    assert readmes
    for readme in readmes:
        url = f"{site['base']}experiments/{readme.parent.name}/"
        assert url in linked, f"{readme.relative_to(ROOT)} is not in the navigation"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and "<h1" in response.read().decode()
