"""Check the built documentation site (docs/_build/html) the way a reader sees it.

1. Every internal link of every page resolves: the file exists and, for ``#anchor``,
   the target page has that id (no network: external links are not followed); every
   public name (``__all__`` of lstm_fast and its public modules) has an API page.
2. The front page and the API page of ``lstm_fast.LSTM`` are opened in headless
   Chromium (``--dump-dom``: the DOM after the theme's scripts ran) and must show
   their headings, navigation and a runnable example (a ``>>>`` block), with the
   theme's stylesheets present; a screenshot of each (``--screenshot``) must not be
   a blank page (a white 1280x1600 PNG is a few KB).

Usage: python tools/check_docs.py [--html docs/_build/html] [--chromium chromium]
Exits non-zero with a message naming the page and what is missing.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urlsplit


class Page(HTMLParser):
    """Headings, ids, links, stylesheets, <pre> texts and the visible text of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.styles, self.pres = set(), [], [], []
        self.headings = {"h1": [], "h2": [], "h3": []}
        self.html_attrs = {}
        self._stack, self._text = [], []
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.html_attrs = a
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "link" and "stylesheet" in (a.get("rel") or "") and a.get("href"):
            self.styles.append(a["href"])
        if tag in ("h1", "h2", "h3", "pre"):
            self._stack.append((tag, len(self._text)))
        if tag in ("script", "style"):
            self._stack.append((tag, None))

    def handle_endtag(self, tag):
        if self._stack and self._stack[-1][0] == tag:
            tag, start = self._stack.pop()
            if start is None:
                return
            text = "".join(self._text[start:]).replace("\xb6", "").replace("#", "").strip()
            if tag == "pre":
                self.pres.append("".join(self._text[start:]))
            else:
                self.headings[tag].append(" ".join(text.split()))

    def handle_data(self, data):
        if self._stack and self._stack[-1][1] is None:     # script/style
            return
        self._text.append(data)
        if data.strip():
            self.text.append(data.strip())


def parse(html):
    p = Page()
    p.feed(html)
    return p


def check_links(root):
    """Every internal href of every page: (page, href, problem) for each broken one."""
    pages = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".html"):
                path = os.path.join(d, f)
                with open(path, encoding="utf-8") as fh:
                    pages[os.path.normpath(path)] = parse(fh.read())
    broken, n = [], 0
    for path, page in pages.items():
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("mailto:"):
                continue                                    # external: not followed
            n += 1
            target, frag = urldefrag(href)
            tpath = path if not target else os.path.normpath(
                os.path.join(os.path.dirname(path), unquote(target)))
            if os.path.isdir(tpath):
                tpath = os.path.join(tpath, "index.html")
            if not os.path.exists(tpath):
                broken.append((path, href, "no such file"))
            elif frag and tpath.endswith(".html") and unquote(frag) not in pages[tpath].ids:
                broken.append((path, href, f"no id {frag!r} in {os.path.relpath(tpath, root)}"))
    return len(pages), n, broken


PUBLIC_MODULES = ("lstm_fast", "lstm_fast.optim", "lstm_fast.adapters", "lstm_fast.torch")


def check_api_pages(root):
    """The public names without a page in api/generated (names as autosummary files them)."""
    import importlib
    import types

    missing = []
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            if name.startswith("__") or isinstance(getattr(mod, name), types.ModuleType):
                continue
            page = os.path.join(root, "api", "generated", f"{modname}.{name}.html")
            if not os.path.isfile(page):
                missing.append(f"{modname}.{name}")
    return missing


def chromium(binary, args, url):
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-dev-shm-usage", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        sys.exit(f"check_docs: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return proc.stdout


def check_page(binary, root, rel, expect, shots):
    """Open ``rel`` in Chromium and check what ``expect`` asks for; returns a summary."""
    path = os.path.abspath(os.path.join(root, rel))
    if not os.path.isfile(path):
        sys.exit(f"check_docs: {rel} was not built")
    url = "file://" + path
    page = parse(chromium(binary, ["--dump-dom"], url))
    problems = []
    if page.headings["h1"][:1] != [expect["h1"]]:
        problems.append(f"first h1 is {page.headings['h1'][:1]}, expected {expect['h1']!r}")
    headings = page.headings["h1"] + page.headings["h2"] + page.headings["h3"]
    for h in expect.get("headings", ()):
        if not any(h in x for x in headings):
            problems.append(f"no heading {h!r} (headings: {headings[:12]})")
    text = " ".join(page.text)
    for s in expect.get("text", ()):
        if s not in text:
            problems.append(f"no text {s!r}")
    if not any(expect["example"] in p for p in page.pres):
        problems.append(f"no example block containing {expect['example']!r}")
    if len(text) < expect.get("min_text", 2000):
        problems.append(f"only {len(text)} characters of text: a blank or broken page")
    if "data-theme" not in page.html_attrs:
        problems.append("the theme's scripts did not run (<html> has no data-theme)")
    css = [s for s in page.styles if not urlsplit(s).scheme or s.startswith("file:")]
    missing = [s for s in css if not os.path.exists(
        os.path.join(os.path.dirname(path), unquote(urldefrag(s)[0]).split("?")[0]))]
    if not css or missing:
        problems.append(f"stylesheets missing: {missing or 'none linked'}")
    shot = os.path.join(shots, os.path.basename(rel).replace(".html", ".png"))
    chromium(binary, ["--window-size=1280,1600", f"--screenshot={shot}"], url)
    size = os.path.getsize(shot) if os.path.exists(shot) else 0
    if size < 30_000:
        problems.append(f"screenshot {shot} is {size} bytes: a blank page")
    if problems:
        sys.exit(f"check_docs: {rel}:\n  " + "\n  ".join(problems))
    return (f"{rel}: h1 {expect['h1']!r}, {len(headings)} headings, {len(page.pres)} code blocks, "
            f"{len(text)} characters, screenshot {shot} ({size} bytes)")


FRONT = {"h1": "lstm_fast", "headings": ["Where to start"],
         "text": ["Installing", "The worked example", "API reference", "The C contract"],
         "example": ">>> layer = lstm_fast.LSTM("}
LSTM_PAGE = {"h1": "lstm_fast.LSTM",
             "text": ["Parameters", "input_size", "hidden_size", "Returns", "Raises", "Examples",
                      "Methods", "unlocked_parameters", "Section Navigation"],
             "example": ">>> layer = lstm_fast.LSTM("}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", default="docs/_build/html")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    ap.add_argument("--screenshots", default=None,
                    help="where the PNGs go (default: a temporary directory)")
    args = ap.parse_args(argv)
    binary = shutil.which(args.chromium)
    if binary is None:
        sys.exit(f"check_docs: {args.chromium!r} not found (Debian: apt-get install chromium)")
    npages, nlinks, broken = check_links(args.html)
    if broken:
        sys.exit("check_docs: broken internal links:\n  " + "\n  ".join(
            f"{os.path.relpath(p, args.html)}: {h} ({why})" for p, h, why in broken[:50]))
    print(f"check_docs: {nlinks} internal links in {npages} pages resolve")
    missing = check_api_pages(args.html)
    if missing:
        sys.exit(f"check_docs: public names without an API page (add them to "
                 f"docs/api/index.rst): {', '.join(missing)}")
    print("check_docs: every public name of " + ", ".join(PUBLIC_MODULES) + " has an API page")
    shots = args.screenshots or tempfile.mkdtemp(prefix="lstm_fast_docs_")
    os.makedirs(shots, exist_ok=True)
    for rel, expect in (("index.html", FRONT), ("api/generated/lstm_fast.LSTM.html", LSTM_PAGE)):
        print("check_docs: " + check_page(binary, args.html, rel, expect, shots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
