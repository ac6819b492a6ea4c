"""report.html as a browser shows it (headless Chromium: Debian's chromium + chromium-driver), for a
run of one batch size and one of two: the answer table comes first and says faster/slower with its
interval, no plot is drawn empty, a variant has one colour in every plot and legend, and no raw
Markdown shows."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium_testlib import headless_chromium, needs_chromium
from test_bench_report import report_from, synthetic_timings

from dyt_deploy.bench.report import write_reports

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")

pytestmark = needs_chromium

# What the page shows, read in one script run: computed colours and drawn sizes, as the browser lays them out.
PAGE_JS = """
const plots = [...document.querySelectorAll("svg")].map(svg => ({
  title: svg.querySelector("title") ? svg.querySelector("title").textContent : "",
  marks: [...svg.querySelectorAll(".mark")].map(m => {
    const box = m.getBBox(), style = getComputedStyle(m);
    return {tag: m.tagName, series: m.getAttribute("data-series"), area: box.width * box.height,
            extent: box.width + box.height, paint: m.tagName === "polyline" ? style.stroke : style.fill};
  }),
  yticks: [...svg.querySelectorAll(".ytick")].map(t => { const b = t.getBBox();
    return {text: t.textContent, top: b.y, bottom: b.y + b.height}; }),
  legends: [...svg.querySelectorAll(".legend[data-series]")].map(l => {
    const style = getComputedStyle(l);
    return {series: l.getAttribute("data-series"), text: l.textContent,
            paint: l.tagName === "text" ? style.fill : style.stroke};
  }),
}));
const first = document.querySelector("table, svg");
return {plots, firstId: first ? first.id : null,
        answer: [...document.querySelectorAll("#summary tbody tr")].map(r => r.innerText),
        answerBeforeSvg: !!document.querySelector("svg") && !!(document.querySelector("#summary")
          .compareDocumentPosition(document.querySelector("svg")) & Node.DOCUMENT_POSITION_FOLLOWING),
        text: document.body.innerText};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


def shown(browser: webdriver.Chrome, tmp_path: Path, batches: tuple[int, ...]) -> dict:
    """Write the reports of a synthetic run of ``batches`` and read report.html as Chromium renders it."""
    paths = write_reports(report_from(synthetic_timings(batches)), tmp_path / "report")
    browser.get(paths["html"].as_uri())
    return browser.execute_script(PAGE_JS)


@pytest.mark.parametrize("batches", [(1,), (1, 8)], ids=["one-batch", "two-batches"])
def test_the_page_answers_first_draws_every_plot_and_keeps_each_variants_colour(browser, tmp_path, batches):
    page = shown(browser, tmp_path, batches)
    assert page["firstId"] == "summary" and page["answerBeforeSvg"]  # the answer, before any other table or plot
    answer = {re.split(r"\t", row)[3]: row for row in page["answer"] if "\ttorch\tbatch=1\t" in row}
    assert re.search(r"x0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] faster", answer["dyt vs layernorm"])
    ort = next(row for row in page["answer"] if "\tort\tbatch=1\tdyt vs layernorm" in row)
    assert re.search(r"x1\.\d{3} \[1\.\d{3}, 1\.\d{3}\] slower", ort)  # DyT without fusions vs LN with them
    assert len(page["answer"]) == 5 * len(batches)

    titles = [p["title"] for p in page["plots"]]
    against_batch = [t for t in titles if "against batch size" in t]
    assert len(against_batch) == (3 if len(batches) > 1 else 0)  # one batch size: no line to draw, no plot
    for plot in page["plots"]:
        assert plot["marks"], f"{plot['title']}: no data marks"
        drawn = [m["area"] > 0 if m["tag"] != "polyline" else m["extent"] > 10 for m in plot["marks"]]
        assert all(drawn), f"{plot['title']}: a mark drawn with no size"
    for plot in (p for p in page["plots"] if "against batch size" in p["title"]):
        lines = [m for m in plot["marks"] if m["tag"] == "polyline"]
        assert len(lines) == len(plot["legends"]) // 2 >= 3
        ticks = sorted(plot["yticks"], key=lambda t: t["top"])
        assert len(ticks) >= 3 and all(float(t["text"]) >= 0 for t in ticks)  # numbers; the unit is on the title
        assert all(a["bottom"] <= b["top"] for a, b in itertools.pairwise(ticks))  # no tick label over another

    colors: dict[str, set[str]] = {}
    for plot in page["plots"]:
        for item in plot["marks"] + plot["legends"]:
            if item["series"]:
                colors.setdefault(item["series"], set()).add(item["paint"])
        assert all(legend["text"] in ("", legend["series"]) for legend in plot["legends"])
    assert set(colors) == {"layernorm", "rmsnorm", "dyt", "dyt-folded"}
    assert all(len(paints) == 1 for paints in colors.values()), colors  # one colour per variant everywhere
    assert len({paint for paints in colors.values() for paint in paints}) == 4  # and no two variants alike

    raw = [line for line in page["text"].splitlines() if line.lstrip().startswith(("|", "#"))]
    assert not raw, f"raw Markdown on the page: {raw[:3]}"
