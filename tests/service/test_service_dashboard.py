"""The dashboard page rendered in headless Chromium (Debian's chromium + chromium-driver): it shows
both variants' live statistics and charts, and runs a controlled comparison from its form; its titles
come from the norms there are, its colours are the bench report's palette, its axis labels do not
overlap, its verdicts are coloured only where the interval and the samples support them, a comparison
run by another client appears on it, and its console stays free of errors."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chromium_testlib import headless_chromium, needs_chromium
from service_testlib import BackgroundServer, images, json_request, serve_in_thread

from dyt_deploy.bench.palette import VARIANT_COLORS
from service.http.app import create_app
from service.settings import Settings

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = needs_chromium
TINY_LM = {"dim": 32, "depth": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 256, "max_seq_len": 64}  # a byte vocabulary
# Read matching elements in one script run: the page re-renders every 2 s, so element handles go stale.
SNAPSHOT_JS = """
return [...document.querySelectorAll(arguments[0])].map(e => ({
  text: e.textContent, variant: e.getAttribute("data-variant"), model: e.getAttribute("data-model"),
  height: e.getAttribute("height"), fill: e.getAttribute("fill"), series: e.getAttribute("data-series"),
  verdict: e.getAttribute("data-verdict"), bold: e.querySelectorAll("b").length,
  style: e.getAttribute("style")}));
"""
# Bounding boxes of each chart's x-axis labels, and its y tick texts, as the browser lays them out.
AXES_JS = """
return [...document.querySelectorAll("svg.chart")].map(svg => ({
  labels: [...svg.querySelectorAll(".xlabel")].map(t => { const b = t.getBoundingClientRect();
    return {text: t.textContent, left: b.left, right: b.right}; }),
  ticks: [...svg.querySelectorAll(".ytick")].map(t => t.textContent),
  title: [...svg.querySelectorAll(".axis-title")].map(t => t.textContent)}));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


def snapshot(driver: webdriver.Chrome, css: str, count: int = 1, timeout_s: float = 20) -> list[dict]:
    """Text and data attributes of the elements matching ``css``, once there are ``count`` of them."""
    found: list[dict] = []

    def enough(d: webdriver.Chrome) -> bool:
        found[:] = d.execute_script(SNAPSHOT_JS, css)
        return len(found) >= count

    WebDriverWait(driver, timeout_s).until(enough)
    return found


def test_dashboard_shows_both_variants_and_runs_a_comparison(server: BackgroundServer, client: httpx.Client,
                                                             browser: webdriver.Chrome, tmp_path: Path) -> None:
    for model in ("vit-layernorm", "vit-dyt"):
        for seed in range(3):
            assert client.post(f"/v2/models/{model}/infer", json=json_request(images(1, seed))).status_code == 200
    browser.get(server.url + "/")
    family = '.family[data-family="vit_tiny"]'
    rows = {r["variant"]: r["text"] for r in snapshot(browser, f"{family} .live-table tr[data-model]", 2)}
    assert set(rows) == {"layernorm", "dyt"}
    assert "vit-dyt" in rows["dyt"] and "READY" in rows["dyt"] and "vit-layernorm" in rows["layernorm"]
    for variant in ("layernorm", "dyt"):
        bars = snapshot(browser, f'{family} svg[data-metric="compute_ms"] rect.bar[data-variant="{variant}"]', 3)
        assert len(bars) == 3 and all(float(b["height"]) > 0 for b in bars)
    ratio = snapshot(browser, f'{family} .ratios[data-model="vit-dyt"]')[0]["text"]
    assert "vit-dyt / vit-layernorm" in ratio and "compute median ratio: ×" in ratio
    assert snapshot(browser, "#server-status")[0]["text"] == "server ready"
    options = [o["text"] for o in snapshot(browser, "#compare-family option")]
    assert options == ["vit_tiny"]  # bert_tiny has one variant: nothing to compare

    Select(browser.find_element(By.ID, "compare-family")).select_by_value("vit_tiny")
    rounds = browser.find_element(By.ID, "compare-rounds")
    rounds.clear()
    rounds.send_keys("6")
    browser.find_element(By.ID, "compare-run").click()
    result_rows = snapshot(browser, "#compare-table tr[data-model]", 2, timeout_s=60)
    assert {r["variant"] for r in result_rows} == {"layernorm", "dyt"}
    assert len(snapshot(browser, "#compare-chart polyline.series", 2)) == 2
    compared = snapshot(browser, '.compare-ratio[data-model="vit-dyt"]')[0]["text"]
    assert "vit-dyt / vit-layernorm median: ×" in compared
    assert "6 rounds" in snapshot(browser, "#compare-result")[0]["text"]
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The page's console errors since the last call (a missing favicon is one)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def assert_axes_are_readable(driver: webdriver.Chrome) -> None:
    """No two x-axis labels of a chart overlap; y ticks are round numbers in equal steps, the unit on
    the axis title."""
    charts = driver.execute_script(AXES_JS)
    assert charts
    for chart in charts:
        labels = sorted(chart["labels"], key=lambda b: b["left"])
        assert all(a["right"] <= b["left"] for a, b in zip(labels, labels[1:], strict=False)), labels
        ticks = [float(t) for t in chart["ticks"]]
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert ticks[0] == 0 and len(ticks) >= 3 and len(steps) == 1, chart["ticks"]
        step = steps.pop()
        assert step / 10 ** math.floor(math.log10(step)) in (1, 2, 2.5, 5)
        assert chart["title"] == ["time (ms)"]


def test_titles_palette_axes_verdicts_and_a_comparison_run_elsewhere(server: BackgroundServer, client: httpx.Client,
                                                                     browser: webdriver.Chrome,
                                                                     tmp_path: Path) -> None:
    browser.get(server.url + "/")
    family = '.family[data-family="vit_tiny"]'
    snapshot(browser, f"{family} svg.chart", 2)
    assert snapshot(browser, "#page-title")[0]["text"] == "dyt-deploy · DyT vs LayerNorm latency"
    assert browser.title == "dyt-deploy · DyT vs LayerNorm latency"
    assert snapshot(browser, f"{family} .family-title")[0]["text"] == "DyT vs LayerNorm"
    assert snapshot(browser, '.family[data-family="bert_tiny"] .family-title')[0]["text"] == "DyT only"
    for variant in ("layernorm", "dyt"):
        bars = snapshot(browser, f'{family} svg[data-metric="compute_ms"] rect.bar[data-variant="{variant}"]', 3)
        assert {b["fill"] for b in bars} == {VARIANT_COLORS[variant]}  # the bench report's colour
    assert_axes_are_readable(browser)
    ratios = snapshot(browser, f'{family} .ratios[data-model="vit-dyt"] .ratio', 2)
    for ratio in ratios:  # a few sequential requests: no verdict, so no colour and no bold figure
        assert ratio["verdict"] == "no clear difference" and ratio["bold"] == 0
        assert "under the minimum of 20" in ratio["text"] and "settle it" in ratio["text"]

    response = client.post("/api/compare", json={"family": "vit_tiny", "rounds": 5, "warmup": 1})  # not the form
    assert response.status_code == 200
    finished = response.json()["finished_at"]
    WebDriverWait(browser, 10).until(lambda d: finished in d.execute_script(SNAPSHOT_JS, "#compare-when")[0]["text"])
    assert "load average" in snapshot(browser, "#compare-when")[0]["text"]
    rows = snapshot(browser, "#compare-table tr[data-model]", 2)
    assert {r["variant"] for r in rows} == {"layernorm", "dyt"}
    legend = snapshot(browser, "#compare-legend .legend-item", 2)
    assert {(item["series"], item["text"]) for item in legend} == {("layernorm", "vit-layernorm (layernorm)"),
                                                                   ("dyt", "vit-dyt (dyt)")}
    lines = snapshot(browser, "#compare-chart polyline.series", 2)
    assert {line["series"] for line in lines} == {"layernorm", "dyt"}
    compared = snapshot(browser, '.compare-ratio[data-model="vit-dyt"] .ratio')[0]
    assert compared["verdict"] == "no clear difference" and compared["bold"] == 0  # 5 rounds
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    assert console_errors(browser) == []  # no favicon 404, no script error


@pytest.fixture(scope="module")
def mixed_server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """No LayerNorm anywhere: vit-dyt beside its folded export (family vit_tiny, one norm) and a
    language model family llama_gen in DyT and RMSNorm."""
    from dyt_deploy.checkpoint import save_checkpoint
    from dyt_deploy.export import export_onnx
    from dyt_deploy.models import create_model

    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(repository / "vit-dyt", root / "repo" / "vit-dyt")
    export_onnx(repository.parent / "dyt.pt", repository=root / "repo", name="vit-dyt-folded", fold=True,
                verify=False)
    for norm in ("dyt", "rmsnorm"):
        save_checkpoint(create_model("llama_tiny", norm=norm, seed=0, **TINY_LM), root / f"{norm}.pt")
        export_onnx(root / f"{norm}.pt", repository=root / "repo", name=f"llm-{norm}", family="llama_gen",
                    task="text-generation", verify=False)
    with serve_in_thread(create_app(root / "repo", Settings(threads=1, warmup_runs=1))) as running:
        yield running


def test_a_repository_without_layernorm_titles_what_it_has_and_shows_each_export(
        mixed_server: BackgroundServer, browser: webdriver.Chrome, tmp_path: Path) -> None:
    with httpx.Client(base_url=mixed_server.url, timeout=60) as client:
        for model in ("vit-dyt", "vit-dyt-folded"):
            assert client.post(f"/v2/models/{model}/infer", json=json_request(images(1))).status_code == 200
        body = {"text_input": "DyT", "parameters": {"max_tokens": 3}}
        generated = client.post("/v2/models/llm-dyt/generate", json=body)
        assert generated.status_code == 200, generated.text
    browser.get(mixed_server.url + "/")
    vit = '.family[data-family="vit_tiny"]'
    snapshot(browser, f"{vit} svg.chart", 2)
    assert snapshot(browser, "#page-title")[0]["text"] == "dyt-deploy · DyT vs RMSNorm latency"
    assert snapshot(browser, f"{vit} .family-title")[0]["text"] == "DyT only"
    assert not browser.find_elements(By.CSS_SELECTOR, f"{vit} .ratios")  # two exports of one norm: no ratio
    fills = {b["model"]: b["fill"] for b in snapshot(browser, f'{vit} svg[data-metric="compute_ms"] rect.bar', 6)}
    assert fills == {"vit-dyt": VARIANT_COLORS["dyt"], "vit-dyt-folded": VARIANT_COLORS["dyt-folded"]}
    assert [o["text"] for o in snapshot(browser, "#compare-family option")] == ["llama_gen"]  # two norms there
    llm = '.family[data-family="llama_gen"]'
    assert snapshot(browser, f"{llm} .family-title")[0]["text"] == "DyT vs RMSNorm"
    row = snapshot(browser, f'{llm} .live-table tr[data-model="llm-dyt"]')[0]["text"]
    assert "text generation: see below" in row and "–" not in row
    assert_axes_are_readable(browser)
    browser.save_screenshot(str(tmp_path / "dashboard-mixed.png"))
    assert console_errors(browser) == []
