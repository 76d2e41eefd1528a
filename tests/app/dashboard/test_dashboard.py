"""The dashboard at /: login, confinement, and a real headless Chromium watching a running job move."""

from __future__ import annotations

import html
import re
import shutil
import uuid
from dataclasses import replace

import pytest
import requests

from tests.services import wait_until
from tests.tasks.conftest import slow_definition

# Enough leaves for the job to outlast a page load and a few polls of its progress.

def unique(name: str) -> str:
    """A cohort name not taken in the shared sample project."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


LEAVES = 100


def api(live_server, token, method, path, **kwargs):
    response = requests.request(method, live_server.url + path, headers={"Authorization": f"Bearer {token}"},
                                timeout=10, **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


def finished(live_server, token, job_id) -> dict:
    def ended():
        job = api(live_server, token, "GET", f"/api/v1/jobs/{job_id}")
        return job if job["status"] in ("succeed", "failed") else None
    return wait_until(ended, what=f"job {job_id} to end")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver (Debian's chromium and chromium-driver; selenium)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("the dashboard's browser test needs Debian's chromium and chromium-driver, which `make test` "
                    "installs (scripts/ensure-browser.sh); install them with apt-get install chromium "
                    "chromium-driver", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def test_dashboard_in_a_browser_draws_the_chart_and_follows_a_running_job(browser, live_server, small_sample,
                                                                         worker):
    from selenium.webdriver.common.by import By

    _, _, token, _ = small_sample
    # A cohort with two versions of different counts (2, then 3 members): its chart has two points.
    created = api(live_server, token, "POST", "/api/v1/cohorts",
                  json={"name": unique("two-versions"), "definition": {"type": "ids", "keys": ["a", "b"]}})
    finished(live_server, token, created["job"]["id"])
    cohort_id = created["cohort"]["id"]
    changed = api(live_server, token, "PATCH", f"/api/v1/cohorts/{cohort_id}",
                  json={"definition": {"type": "ids", "keys": ["a", "b", "c"]}})
    finished(live_server, token, changed["job"]["id"])

    browser.get(live_server.url + "/")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait_until(lambda: browser.find_elements(By.ID, "cohorts"), what="the dashboard after login")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-cohort-id="{cohort_id}"]')
    assert row.find_element(By.CSS_SELECTOR, ".count").text == "3"
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "succeed"
    chart = row.find_element(By.CSS_SELECTOR, "svg.chart")
    assert chart.is_displayed() and chart.rect["width"] > 50 and chart.rect["height"] > 10
    points = [tuple(map(float, p.split(","))) for p in
              row.find_element(By.CSS_SELECTOR, "svg.chart polyline").get_attribute("points").split()]
    assert len(points) == 2 and points[0][0] < points[1][0]
    assert points[1][1] < points[0][1], "the larger count is drawn higher"
    # The line is painted: its bounding box in the page spans the chart's width.
    box = browser.execute_script("return document.querySelector("
                                 f"'tr[data-cohort-id=\"{cohort_id}\"] svg.chart polyline').getBBox().width")
    assert box > 50

    slow = api(live_server, token, "POST", "/api/v1/cohorts", json={"name": unique("slow"), "definition":
                                                                    slow_definition(LEAVES)})
    job_id = slow["job"]["id"]
    # Polled every 200 ms (the login's redirect went to / with the default second).
    browser.get(live_server.url + "/?refresh=200")
    selector = f'tr[data-cohort-id="{slow["cohort"]["id"]}"] [data-job-id="{job_id}"] .pct'
    browser.execute_script("window.sameDocument = true")

    def shown_progress() -> int | None:
        found = browser.find_elements(By.CSS_SELECTOR, selector)
        return int(found[0].text.rstrip("%")) if found and found[0].text else None

    first = wait_until(lambda: (p := shown_progress()) is not None and 0 < p < 100 and p, interval=0.05,
                       what="the running job's progress on the page")
    later = wait_until(lambda: (p := shown_progress()) is not None and p > first and p, interval=0.05,
                       what="the progress to move without a reload")
    assert browser.execute_script("return window.sameDocument === true"), "moved by the page's script, not a reload"
    assert first < later
    job = finished(live_server, token, job_id)
    assert job["status"] == "succeed", job
    # Once the job ends the page reloads itself and shows the new count (the job's: the engine's counts are
    # checked against the reference elsewhere; here, that the page shows what was computed).
    expected = job["result"]["count"]
    wait_until(lambda: browser.execute_script("return window.sameDocument !== true"), what="the page to reload")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-cohort-id="{slow["cohort"]["id"]}"]')
    assert row.find_element(By.CSS_SELECTOR, ".count").text == f"{expected:,}"
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "succeed"


def test_login_is_required_and_shows_only_the_tokens_project(client, api_project, worker):
    name, _, headers = api_project
    page = client.get("/")
    assert page.status_code == 200 and b'name="token"' in page.data and name.encode() not in page.data
    assert client.get("/dashboard/live.json").status_code == 401
    refused = client.post("/login", data={"token": "nope"})
    assert refused.status_code == 401 and b"unknown token" in refused.data
    token = headers["Authorization"].split()[1]
    logged_in = client.post("/login", data={"token": token})
    assert logged_in.status_code == 303
    cookie = logged_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = client.get("/")
    assert f'<span id="project">{name}</span>'.encode() in page.data
    assert client.get("/dashboard/live.json").get_json() == {"jobs": []}
    client.post("/logout")
    assert b'name="token"' in client.get("/").data


def test_a_failed_job_comes_first_with_its_error(client, api_project, worker):
    _, _, headers = api_project

    def submit_and_end(name, definition):
        job = client.post("/api/v1/cohorts", json={"name": name, "definition": definition},
                          headers=headers).get_json()["job"]
        return wait_until(lambda: (j := client.get(f"/api/v1/jobs/{job['id']}", headers=headers).get_json())["status"]
                          in ("succeed", "failed") and j, what="the job to end")

    # The failure is the older job: it is listed first all the same.
    failed = submit_and_end("bad", {"type": "profile", "property": "no_such_property", "cmp": "eq", "values": [1]})
    ok = submit_and_end("ok", {"type": "ids", "keys": ["a"]})
    assert failed["status"] == "failed" and ok["status"] == "succeed", (failed, ok)
    page = client.get("/", headers=headers).get_data(as_text=True)
    assert [int(i) for i in re.findall(r'data-job-row="(\d+)"', page)] == [failed["id"], ok["id"]]
    assert failed["error_message"] in html.unescape(page) and failed["error_code"] in page


def test_operator_may_open_one_project_without_a_token(service_settings, celery_app, api_project):
    from app import create_app

    name, _, _ = api_project
    app = create_app({"TESTING": True, "SETTINGS": replace(service_settings, dashboard_project=name),
                      "CELERY": celery_app})
    page = app.test_client().get("/")
    assert f'<span id="project">{name}</span>'.encode() in page.data


def test_tags_are_listed_with_their_type_count_and_chart(client, api_project, worker):
    _, _, headers = api_project
    definition = {"kind": "values", "values": [{"value": "a", "definition": {"type": "ids", "keys": ["u1", "u2"]}}]}
    created = client.post("/api/v1/tags", json={"name": "t", "definition": definition}, headers=headers).get_json()
    wait_until(lambda: client.get(f"/api/v1/jobs/{created['job']['id']}", headers=headers).get_json()["status"]
               in ("succeed", "failed"), what="the tag's job")
    page = client.get("/", headers=headers).get_data(as_text=True)
    tags = page[page.index('<table id="tags">'):page.index("</table>", page.index('<table id="tags">'))]
    row = tags[tags.index(f'data-tag-id="{created["tag"]["id"]}"'):]
    assert "<td>string</td>" in row and '<td class="num count">2</td>' in row and "svg" in row
    assert "data-tag-id" not in page[page.index('<table id="cohorts">') if '<table id="cohorts">' in page else 0:
                                     page.index('<table id="tags">')]
