"""Logging in to the dashboard: tokens traded for a session cookie, CSRF, roles, error pages."""

from __future__ import annotations

from afield.fleet.auth import revoke_token
from afield.fleet.models import WebSession
from tests.web import Site


def test_a_page_without_a_session_sends_the_browser_to_log_in(web: Site) -> None:
    answer = web.client().get("/devices?status=Offline")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/devices%3Fstatus%3DOffline"
    form = web.client().get(answer.headers["location"])
    assert form.status_code == 200
    assert 'name="token"' in form.text
    assert 'value="/devices?status=Offline"' in form.text


def test_a_token_logs_in_with_a_strict_httponly_cookie_and_only_its_digest_is_kept(
    web: Site,
) -> None:
    client = web.client()
    answer = client.post("/login", data={"token": web.admin_token, "next": "/events"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/events"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("afield_session=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert attribute.lower() in cookie.lower(), cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    with web.db.sessions() as session:
        stored = [row.session_sha256 for row in session.query(WebSession)]
    assert len(stored) == 1
    assert value not in stored[0]
    assert "ops · admin" in client.get("/").text


def test_a_wrong_token_gets_the_form_again_with_401_and_why(web: Site) -> None:
    answer = web.client().post("/login", data={"token": "afield_" + "x" * 43, "next": "/"})
    assert answer.status_code == 401
    assert "unknown or revoked" in answer.text
    assert "set-cookie" not in answer.headers
    garbage = web.client().post("/login", data={"token": "<script>alert(1)</script>"})
    assert garbage.status_code == 401
    assert "<script>alert" not in garbage.text


def test_login_goes_on_only_to_paths_of_this_site(web: Site) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        answer = web.client().post("/login", data={"token": web.viewer_token, "next": target})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/", target


def test_revoking_the_token_ends_its_sessions(web: Site) -> None:
    client = web.login("viewer")
    assert client.get("/").status_code == 200
    revoke_token(web.db, "watcher")
    assert client.get("/").status_code == 303


def test_logout_needs_the_session_csrf_and_ends_the_session(web: Site) -> None:
    client = web.login("viewer")
    page = client.get("/")
    stale = client.post("/logout", data={"csrf": "not-it"})
    assert stale.status_code == 403
    assert "reload the page" in stale.text
    assert client.get("/").status_code == 200
    done = client.post("/logout", data={"csrf": web.csrf(page)})
    assert done.status_code == 303
    assert client.get("/").status_code == 303


def test_a_form_from_another_site_is_refused(web: Site) -> None:
    client = web.login("admin")
    answer = client.post("/logout", data={"csrf": "x"}, headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403
    assert "another site" in answer.text


def test_unknown_pages_and_bad_forms_answer_a_page_not_a_traceback(web: Site) -> None:
    client = web.login("viewer")
    missing = client.get("/no/such/page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "no such page" in missing.text
    not_a_form = client.post("/logout", content=b"{}", headers={"content-type": "application/json"})
    assert not_a_form.status_code == 415
    assert "expected a form" in not_a_form.text
    huge = client.post("/logout", data={"csrf": "x" * 10000})
    assert huge.status_code == 413
    api = client.get("/api/v1/nothing")
    assert api.headers["content-type"].startswith("application/json")


def test_pages_carry_a_strict_content_security_policy(web: Site) -> None:
    page = web.client().get("/login")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


def test_static_files_are_served_from_the_package(web: Site) -> None:
    client = web.client()
    for path in (
        "/static/afield.css",
        "/static/afield.js",
        "/static/vendor/htmx-2.0.11.min.js",
        "/static/vendor/htmx-ext-sse-2.2.4.min.js",
        "/static/vendor/chart-4.5.1.umd.min.js",
    ):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert len(answer.content) > 1000, path
