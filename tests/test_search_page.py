"""The search page, as a person uses it in Chromium (Playwright driving Debian's chromium): a query, a filter,
"more like this", a duplicate group and the review list, over a batch the pipeline processed (a photo uploaded
twice under two names, so the catalogue has a group), served by the search service over HTTP. Screenshots go to
test-artifacts/search/."""

from pathlib import Path

import pytest

from tests.conftest import PHOTOS, SensorDriver, image_bytes, search_service, serving
from tests.test_dagster_dev import chromium_path
from vision_assets.resources import RefereeResource
from vision_assets.service.app import create_app
from vision_assets.wiring import build_definitions

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "search"


@pytest.fixture
def search_page(models, s3_image_store, instance, s3_client, bucket):
    """(the page's URL, a refresh of the catalogue): the batch is processed, the catalogue not built yet; the referee
    on, as on a GPU box, and settling whatever it answers with a label (a random-weight twin is sure of nothing)."""
    referee = models["referee"]
    models = models | {"referee": RefereeResource(model=referee.model, model_cache=referee.model_cache, offline=True,
                                                  mode="on", min_probability=0.0, margin=0.0, captions="on")}
    for name, data in {"bus.jpg": (PHOTOS / "bus.jpg").read_bytes(), "bus-copy.jpg": (PHOTOS / "bus.jpg").read_bytes(),
                       "zidane.jpg": (PHOTOS / "zidane.jpg").read_bytes(),
                       "plain.png": image_bytes((96, 64))}.items():
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=data)
    defs = build_definitions(s3_image_store, models)
    driver = SensorDriver(defs, instance, whole_pipeline=True)
    assert all(run.success for run in driver.tick_and_run())

    def refresh_catalogue():
        assert defs.resolve_job_def("refresh_catalog").execute_in_process(instance=instance).success

    with search_service(models, s3_image_store.results, dagster_url="http://dagster.example") as catalogue, \
            serving(create_app(catalogue)) as port:
        yield f"http://127.0.0.1:{port}/", refresh_catalogue


def shown_images(page) -> list[str]:
    return page.locator("#results .card").evaluate_all("cards => cards.map(c => c.dataset.image)")


def test_a_person_searches_filters_follows_more_like_this_and_reviews(search_page):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page_url, refresh_catalogue = search_page
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(30_000)
        page.goto(page_url)

        # Before any catalogue the Duplicates tab says there is none yet, not that there are no duplicates.
        page.get_by_role("button", name="Duplicates").click()
        page.locator("#groups p", has_text="No catalogue yet").wait_for()
        refresh_catalogue()
        page.locator("nav button[data-tab=search]").click()

        page.get_by_label("query").fill("a bus in a street")
        page.locator("#query button[type=submit]").click()
        page.locator("#results .card").first.wait_for()
        assert set(shown_images(page)) == {"bus.jpg", "bus-copy.jpg", "zidane.jpg", "plain.png"}
        first = page.locator("#results .card img").first
        first.evaluate("img => img.decode()")
        assert first.evaluate("img => img.naturalWidth") > 0  # a real thumbnail, boxes drawn on it
        assert page.locator("#results .card a", has_text="batch").first.get_attribute("href").startswith(
            "http://dagster.example/assets/source_images?view=partitions&partition=")
        page.screenshot(path=str(SCREENSHOTS / "search.png"), full_page=True)
        # Each image's caption under it (random words from the random-weight twin, but words).
        assert page.locator("#results .card .meta.caption").count() == 4

        # A filter: objects only, of the entity the first object found is.
        page.get_by_label("what").select_option("crops")
        page.locator("#query button[type=submit]").click()
        page.wait_for_selector("#results[data-query*='target=crops']", state="attached")
        # The referee's word on the crops it judged: a badge, its opinion on hover.
        referee = page.locator("#results .card .badge.referee")
        referee.first.wait_for()
        assert {text for text in referee.all_inner_texts()} <= {"settled by the referee", "referee did not settle"}
        assert all(title.startswith("referee") for title in referee.evaluate_all("bs => bs.map(b => b.title)"))
        entity = page.locator("#results .card .meta").first.inner_text().split(" · ")[-1]
        page.locator("summary", has_text="Filters").click()
        page.locator("input[name=entity]").fill(entity)
        page.locator("#query button[type=submit]").click()
        page.wait_for_selector(f"#results[data-query*='entity={entity}']", state="attached")
        metas = page.locator("#results .card .meta").filter(has_text="score").all_inner_texts()
        assert metas and all(meta.endswith(entity) for meta in metas), metas
        page.screenshot(path=str(SCREENSHOTS / "filtered.png"), full_page=True)

        # More like this, from an image result.
        page.locator("input[name=entity]").fill("")
        page.get_by_label("what").select_option("images")
        page.locator("#query button[type=submit]").click()
        page.wait_for_selector("#results[data-query*='target=images']", state="attached")
        page.locator("#results .card[data-image='zidane.jpg'] a.like").click()
        page.wait_for_function("() => document.querySelector('#said').textContent === 'more like zidane.jpg'")
        liked = shown_images(page)
        assert liked and "zidane.jpg" not in liked and set(liked) <= {"bus.jpg", "bus-copy.jpg", "plain.png"}
        page.screenshot(path=str(SCREENSHOTS / "more-like.png"), full_page=True)

        # The duplicate group: the same photo under two names.
        page.get_by_role("button", name="Duplicates").click()
        group = page.locator("#groups .group").first
        group.wait_for()
        assert page.locator("#groups .group").count() == 1  # the near-duplicate group is the same pair: not repeated
        assert "exact duplicates · 2 images" in group.inner_text()
        assert set(group.locator("img").evaluate_all("imgs => imgs.map(i => i.alt)")) == {"bus.jpg", "bus-copy.jpg"}
        page.screenshot(path=str(SCREENSHOTS / "duplicates.png"), full_page=True)

        # The review list: what the committee doubts, each with its task.
        page.get_by_role("button", name="Needs review").click()
        page.wait_for_function("() => document.querySelector('#review-list').children.length > 0")
        cards = page.locator("#review-list .card")
        for n in range(cards.count()):
            assert cards.nth(n).locator(".badge", has_text="needs review").count() == 1
            assert cards.nth(n).locator("a", has_text="task").count() == 1
        page.screenshot(path=str(SCREENSHOTS / "review.png"), full_page=True)
        browser.close()
