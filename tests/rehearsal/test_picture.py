"""Checks the pictures the rehearsals drew (scripts/rehearse --report, run by scripts/test for every scenario): each
page parses (XHTML), is self-contained (no script, no fetched resource), and draws what happened: both versions'
weights on every side probed, the requests per side with a failures series, each hook that ran with its verdict as
the report gives it, and the flip when the deployment flipped.

    python test_picture.py target/rehearsal-happy.html ...    (each page beside its --json report, .json)
"""

import json
import sys
import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"


def check(page, report):
    problems = []
    with open(page) as f:
        text = f.read()
    if "<script" in text or "src=" in text or "href=" in text:
        problems.append("not self-contained")
    try:
        root = ET.fromstring(text.split("\n", 1)[1])
    except ET.ParseError as e:
        return [f"does not parse: {e}"]
    series = {(p.get("data-side"), p.get("data-version")) for p in root.iter(SVG + "path") if p.get("class") == "series"}
    for side in ("public", "private"):
        for v in ("blue", "green"):
            if (side, v) not in series:
                problems.append(f"no {side} {v} weights")
    requests = {(g.get("data-side"), g.get("data-version")) for g in root.iter(SVG + "g")
                if g.get("class") == "requests-series"}
    for side in ("public", "private"):
        if (side, "failed") not in requests:
            problems.append(f"no {side} requests")
    spans = {g.get("data-label"): g.get("data-verdict") for g in root.iter(SVG + "g") if g.get("class") == "span"}
    for hook, h in report["hooks"].items():
        if h["verdict"] != "NoReport" and spans.get(hook) != h["verdict"]:
            problems.append(f"{hook}: drawn {spans.get(hook)}, reported {h['verdict']}")
    flips = [m for m in root.iter(SVG + "line") if m.get("class") == "mark" and m.get("data-kind") == "flip"]
    if report["outcome"] == "succeeded" and report.get("flip_skew_ms") is not None and not flips:
        problems.append("no flip drawn")
    return problems


def main():
    failed = 0
    for page in sys.argv[1:]:
        with open(page.removesuffix(".html") + ".json") as f:
            report = json.load(f)
        problems = check(page, report)
        failed += bool(problems)
        print(f"{'ok  ' if not problems else 'FAIL'} {page}" + (": " + "; ".join(problems) if problems else ""))
    return 1 if failed or not sys.argv[1:] else 0


if __name__ == "__main__":
    sys.exit(main())
