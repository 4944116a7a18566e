"""The real web app in headless Chromium: ask, fallback, a rejected upload, and adding an expert without a restart.

The app runs `expertgate serve` in a child process with the tiny base model and random-adapter experts;
the gate is the real one, so domain questions route to their expert. Screenshots of each tab go to
bench/results/screenshots/.
"""
import json
import re
from pathlib import Path

import pytest

from tests.app_process import running_server
from tests.experts_dir import build_experts_dir

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "screenshots"
ASTRONOMY = [
    ("How far is the Moon from the Earth?", "About 384,000 kilometres on average."),
    ("Why does the Moon have phases?", "We see different parts of its sunlit half as it orbits the Earth."),
    ("What is a light year?", "The distance light travels in one year, about 9.46 trillion kilometres."),
    ("Which planet has the most moons?", "Saturn, with well over a hundred confirmed moons."),
    ("What is a neutron star?", "The collapsed core of a massive star, made almost entirely of neutrons."),
    ("Why is Mars red?", "Iron oxide, rust, in its dust and rocks gives Mars its colour."),
    ("What causes a solar eclipse?", "The Moon passes between the Sun and the Earth and blocks sunlight."),
    ("How old is the universe?", "About 13.8 billion years."),
    ("What is a black hole?", "A region where gravity is so strong that not even light escapes."),
    ("What are Saturn's rings made of?", "Mostly ice particles with some rock and dust."),
    ("What is the closest star to the Sun?", "Proxima Centauri, about 4.2 light years away."),
    ("What is a galaxy?", "A huge system of stars, gas, dust and dark matter bound by gravity."),
    ("How big is Jupiter?", "Its diameter is about eleven times the Earth's."),
    ("What is a comet?", "A ball of ice and dust that grows a tail when it nears the Sun."),
    ("Why do stars twinkle?", "Turbulence in the Earth's atmosphere bends their light."),
    ("What is the Milky Way?", "The barred spiral galaxy that contains our Solar System."),
    ("What is a supernova?", "The explosion of a star at the end of its life."),
    ("How hot is the surface of the Sun?", "About 5,500 degrees Celsius."),
    ("What is an exoplanet?", "A planet that orbits a star other than the Sun."),
    ("What telescope replaced Hubble for infrared astronomy?", "The James Webb Space Telescope."),
    ("What is a meteor shower?", "Many meteors from debris left by a comet burning up in the atmosphere."),
    ("Why is Venus so hot?", "Its thick carbon dioxide atmosphere traps heat."),
    ("What is the Big Bang?", "The expansion of the universe from an extremely hot, dense early state."),
    ("What is an asteroid belt?", "The region between Mars and Jupiter where most asteroids orbit."),
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("browser-app")
    experts = build_experts_dir(tiny_model_dir, root / "experts")
    corrupt = experts / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text("{", encoding="utf-8")
    registry = json.loads((experts / "registry.json").read_text())
    registry["experts"].append({"name": "corrupt", "folder": "corrupt"})
    (experts / "registry.json").write_text(json.dumps(registry), encoding="utf-8")
    flags = ["--base-model", str(tiny_model_dir), "--experts-dir", str(experts), "--device", "cpu",
             "--max-new-tokens", "16"]
    with running_server(*flags, log=root / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(app_url)
        yield page
        browser.close()


def _open(page, tab: str) -> None:
    page.get_by_role("tab", name=tab).click()


def _ask(page, question: str) -> None:
    _open(page, "Ask")
    page.locator("#question textarea").fill(question)
    page.locator("#ask-button").click()


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(500)  # let the charts draw
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _row(page, expert: str):
    return page.locator("#experts-table").get_by_role("row", name=re.compile(f"^{expert} "))


def _table_rows(page) -> list[str]:
    return page.locator("#experts-table").get_by_role("row").all_inner_texts()


def test_a_broken_expert_is_disabled_visibly(page):
    expect(page.locator("#expert-warnings")).to_contain_text("expert 'corrupt' is disabled")
    _open(page, "Experts")
    expect(_row(page, "corrupt")).to_contain_text("disabled")
    expect(_row(page, "medical")).to_contain_text("serving")


def test_empty_question_shows_inline_error(page):
    _ask(page, "   ")
    expect(page.locator("#ask-status")).to_contain_text("the question is empty")


def test_medical_question_is_answered_by_the_medical_expert(page):
    _ask(page, "What are the common symptoms of a heart attack?")
    medical = page.locator('#experts-used [data-expert="medical"]')
    expect(medical).to_be_visible()
    expect(medical.locator(".eg-weight")).to_have_text(re.compile(r"^[01]\.\d\d$"))
    expect(page.locator("#answer textarea")).not_to_have_value("")
    expect(page.locator("#timings")).to_contain_text("tokens/s")
    expect(page.locator("#history")).to_contain_text("medical")
    _screenshot(page, "ask")


def test_off_domain_question_falls_back(page):
    _ask(page, "Tell me a joke about penguins.")
    expect(page.locator("#fallback")).to_contain_text("Fallback: the base model answered")
    expect(page.locator("#experts-used")).to_contain_text("base model")


def _uploaded(stem: str) -> re.Pattern:
    """Gradio's file list may set the extension in an element of its own: the text then reads "broken .jsonl"."""
    return re.compile(rf"{re.escape(stem)}\s*\.jsonl")


def test_malformed_upload_is_refused_inline(page, tmp_path):
    page.reload()  # the table then shows the traffic of the questions earlier tests asked
    _open(page, "Experts")
    before = _table_rows(page)
    assert len(before) == 6 and "medical" in before[1]
    rows = [{"question": q, "answer": a} for q, a in ASTRONOMY]
    bad = tmp_path / "broken.jsonl"
    _write_jsonl(bad, rows)
    bad.write_text(bad.read_text().replace('"answer"', '"anser"', 1) + "{not json\n", encoding="utf-8")
    page.locator("#new-name input").fill("broken")
    page.locator("#new-file input[type=file]").set_input_files(str(bad))
    expect(page.locator("#new-file")).to_contain_text(_uploaded("broken"))
    page.locator("#train-button").click()
    status = page.locator("#train-status .eg-error")
    expect(status).to_contain_text("line 1: missing 'answer'")
    expect(status).to_contain_text("line 25: malformed JSON")
    expect(status).not_to_contain_text("/tmp")
    assert _table_rows(page) == before


def test_added_expert_is_listed_and_routed_to_without_restart(page, tmp_path):
    page.reload()
    _open(page, "Experts")
    data = _write_jsonl(tmp_path / "astronomy.jsonl", [{"question": q, "answer": a} for q, a in ASTRONOMY])
    page.locator("#new-name input").fill("astronomy")
    page.locator("#new-description input").fill("stars, planets and telescopes")
    page.locator("#new-file input[type=file]").set_input_files(str(data))
    expect(page.locator("#new-file")).to_contain_text(_uploaded("astronomy"))
    page.locator("#new-max-steps input").fill("2")
    page.locator("#train-button").click()
    expect(page.locator("#train-status")).to_contain_text("is ready", timeout=90_000)
    expect(page.locator("#train-progress")).to_contain_text("step 2 of 2")
    expect(_row(page, "astronomy")).to_contain_text("serving")
    expect(page.locator("#expert-warnings li")).to_have_count(1)
    _screenshot(page, "experts")

    _ask(page, "Which planet in the Solar System has the most moons?")
    expect(page.locator('#experts-used [data-expert="astronomy"]')).to_be_visible()

    _open(page, "Load")
    expect(page.locator("#load-summary")).to_contain_text("recent requests")
    expect(page.locator("#load-table")).to_contain_text("astronomy")
    _screenshot(page, "load")


def test_removing_an_expert_needs_confirmation(page):
    _open(page, "Experts")
    page.locator("#remove-expert").get_by_text("Remove expert").click()
    page.locator("#remove-name input").click()
    page.get_by_role("option", name="finance").click()
    page.locator("#remove-button").click()
    expect(page.locator("#remove-confirm")).to_be_visible()
    page.locator("#remove-cancel").click()
    expect(page.locator("#remove-confirm")).to_be_hidden()
    expect(_row(page, "finance")).to_have_count(1)
    page.locator("#remove-name input").click()
    page.get_by_role("option", name="finance").click()
    page.locator("#remove-button").click()
    page.locator("#remove-confirm").click()
    expect(page.locator("#remove-status")).to_contain_text("Removed expert 'finance'")
    expect(_row(page, "finance")).to_have_count(0)
    expect(_row(page, "medical")).to_have_count(1)
