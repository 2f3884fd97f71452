"""The documentation's links hold: every relative link in README.md, BENCHMARKS.md and docs/ names a file of the
repository, and every #anchor a heading of the page it points at (as GitHub renders them). A guide split or a
heading renamed fails here instead of leaving a reader at a dead link."""

import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def anchors(path):
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    with open(path) as f:
        text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def problems(files):
    out = []
    for page in files:
        with open(page) as f:
            text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(target):
                out.append(f"{os.path.relpath(page, ROOT)}: {link}: no such file")
            elif anchor and target.endswith(".md") and anchor not in anchors(target):
                out.append(f"{os.path.relpath(page, ROOT)}: {link}: no heading #{anchor} there")
    return out


def main():
    files = [os.path.join(ROOT, p) for p in ("README.md", "BENCHMARKS.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    found = problems(files)
    # The check can fail: a page with a dead file link and a dead anchor is refused on both.
    probe = os.path.join(ROOT, "target", "docs-link-probe.md")
    os.makedirs(os.path.dirname(probe), exist_ok=True)
    with open(probe, "w") as f:
        f.write("# Probe\n\n[gone](no-such-file.md) and [nowhere](#no-such-heading) and [here](#probe)\n")
    refused = problems([probe])
    os.remove(probe)
    if len(refused) != 2:
        found.append(f"the link check let dead links through: {refused}")
    for p in found:
        print(f"docs: {p}")
    print(f"docs: {len(files)} pages, {'every link holds' if not found else f'{len(found)} problems'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
