"""The dashboard page rendered in headless Chromium (Debian's chromium + chromium-driver): it shows
both variants' live statistics and charts, and runs a controlled comparison from its form."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chromium_testlib import headless_chromium, needs_chromium
from service_testlib import BackgroundServer, images, json_request

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = needs_chromium
# Read matching elements in one script run: the page re-renders every 2 s, so element handles go stale.
SNAPSHOT_JS = """
return [...document.querySelectorAll(arguments[0])].map(e => ({
  text: e.textContent, variant: e.getAttribute("data-variant"), model: e.getAttribute("data-model"),
  height: e.getAttribute("height")}));
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
