"""The held-out digits on the dashboard: the tiny reference image twins (trained once per session),
exported as make demo exports them, with make demo's examples.npz beside each. ``GET /api/examples``
answers each variant's prediction through the served runner (the same class as ``/infer``, outside the
traffic statistics); headless Chromium draws every digit with one prediction per variant; without
examples the panel stays hidden and the page asks for none."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from chromium_testlib import headless_chromium, needs_chromium
from reference_testlib import tiny_reference
from service_testlib import BackgroundServer, json_request, serve_in_thread

from dyt_deploy.export import export_onnx
from service.demo.run import EXAMPLES_FILE, write_examples
from service.http.app import create_app
from service.settings import Settings

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = needs_chromium
MODELS = ("digits-dyt", "digits-layernorm")
# Per drawn digit: its label cell, the canvas size, and the (x, y) of its darkest pixel; per prediction its data.
PAGE_JS = """
const section = document.getElementById("examples-section");
const digits = [...section.querySelectorAll("tr.example")].map(row => {
  const canvas = row.querySelector("canvas.digit"), context = canvas.getContext("2d");
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let darkest = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] < data[darkest * 4]) darkest = i / 4;
  const levels = new Set(); for (let i = 0; i < data.length; i += 4) levels.add(data[i]);
  return {index: Number(row.dataset.index), label: row.querySelector(".label").textContent,
          width: canvas.width, height: canvas.height, levels: levels.size,
          darkest: [darkest % canvas.width, Math.floor(darkest / canvas.width)]};
});
const predictions = [...section.querySelectorAll("td.prediction")].map(td => ({model: td.dataset.model,
  index: Number(td.dataset.index), label: Number(td.dataset.label), confidence: Number(td.dataset.confidence),
  text: td.textContent}));
return {hidden: section.hidden, digits, predictions};
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repo/digits-dyt and repo/digits-layernorm from the tiny twins' checkpoints, examples beside each."""
    twins = tiny_reference("image")
    repo = tmp_path_factory.mktemp("examples") / "repo"
    for norm, name in zip(("dyt", "layernorm"), MODELS, strict=True):
        export_onnx(twins.checkpoints[norm], repository=repo, name=name, family="digits_vit", verify=False)
    write_examples(twins.test_data, [repo / name for name in MODELS])
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[BackgroundServer]:
    with serve_in_thread(create_app(repository, Settings(threads=1, warmup_runs=1))) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


def served_class(url: str, model: str, image: np.ndarray) -> int:
    """The class ``/infer`` answers for one image."""
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=json_request(image[None]), timeout=30).json()
    return int(np.argmax(answer["outputs"][0]["data"]))


def page_state(driver: webdriver.Chrome, predictions: int) -> dict:
    """The examples panel once it holds ``predictions`` prediction cells."""
    state: dict = {}

    def drawn(d: webdriver.Chrome) -> bool:
        state.update(d.execute_script(PAGE_JS))
        return len(state["predictions"]) >= predictions

    WebDriverWait(driver, 30).until(drawn)
    return state


def test_examples_api_answers_what_the_served_models_answer(server: BackgroundServer, repository: Path) -> None:
    before = {v["model"]: v["count"] for f in httpx.get(f"{server.url}/api/live").json()["families"]
              for v in f["variants"]}
    report = httpx.get(f"{server.url}/api/examples", timeout=60).json()
    (family,) = report["families"]
    stored = np.load(repository / MODELS[0] / EXAMPLES_FILE)
    assert family["family"] == "digits_vit" and family["input"] == "pixel_values"
    assert [e["label"] for e in family["examples"]] == list(range(10)) == stored["labels"].tolist()
    assert {v["model"] for v in family["variants"]} == set(MODELS)
    for variant in family["variants"]:
        for example, prediction in zip(family["examples"], variant["predictions"], strict=True):
            image = np.asarray(example["pixels"], dtype=np.float32)
            assert np.array_equal(image, stored["pixel_values"][example["index"]])
            assert prediction["label"] == served_class(server.url, variant["model"], image)
            assert 0.1 <= prediction["confidence"] <= 1 and prediction["latency_ms"] > 0
    after = {v["model"]: v["count"] for f in httpx.get(f"{server.url}/api/live").json()["families"]
             for v in f["variants"]}
    assert {m: after[m] - before[m] for m in MODELS} == {m: 10 for m in MODELS}  # the /infer calls only


def test_dashboard_draws_each_digit_with_every_variants_prediction(server: BackgroundServer,
                                                                   browser: webdriver.Chrome) -> None:
    report = httpx.get(f"{server.url}/api/examples", timeout=60).json()
    (family,) = report["families"]
    browser.get(server.url + "/")
    state = page_state(browser, 10 * len(MODELS))
    assert not state["hidden"] and len(state["digits"]) == 10
    for digit, example in zip(state["digits"], family["examples"], strict=True):
        pixels = np.asarray(example["pixels"])[0]
        assert digit["label"] == str(example["label"]) and (digit["height"], digit["width"]) == pixels.shape
        assert digit["levels"] > 2  # drawn, not a blank canvas
        ink = (pixels[digit["darkest"][1], digit["darkest"][0]] - pixels.min()) / np.ptp(pixels)
        assert ink > 0.99  # the darkest ink where the sample's value is highest
    expected = {(v["model"], i): p for v in family["variants"] for i, p in enumerate(v["predictions"])}
    shown = {(p["model"], p["index"]): p for p in state["predictions"]}
    assert set(shown) == set(expected)  # one per variant per digit
    for key, prediction in shown.items():
        assert prediction["label"] == expected[key]["label"] and 0 <= prediction["confidence"] <= 1
        assert prediction["confidence"] == pytest.approx(expected[key]["confidence"], abs=1e-6)
        assert prediction["text"].startswith(str(prediction["label"]))
    assert console_errors(browser) == []


def test_without_examples_the_panel_is_absent(server: BackgroundServer, repository: Path,
                                              browser: webdriver.Chrome, tmp_path: Path) -> None:
    for name in MODELS:
        shutil.move(repository / name / EXAMPLES_FILE, tmp_path / f"{name}.npz")
    try:
        assert httpx.get(f"{server.url}/api/examples", timeout=60).json() == {"families": []}
        assert httpx.get(f"{server.url}/api/live").json()["examples"] == []
        browser.get(server.url + "/")
        WebDriverWait(browser, 30).until(lambda d: d.execute_script(
            "return document.querySelectorAll('.family .live-table tr[data-model]').length") == 2)
        assert browser.execute_script(PAGE_JS) == {"hidden": True, "digits": [], "predictions": []}
        requested = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert not any(name.endswith("/api/examples") for name in requested)
        assert console_errors(browser) == []
    finally:
        for name in MODELS:
            shutil.move(tmp_path / f"{name}.npz", repository / name / EXAMPLES_FILE)


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The page's console errors since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
