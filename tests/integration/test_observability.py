"""What operators see: the access log, request-id binding, /metrics and /tls/ask."""

from __future__ import annotations

import re

import httpx
from structlog.testing import capture_logs

from tests.integration.conftest import Stack
from tests.servers import wait_until

ACCESS_FIELDS = {
    "request_id", "method", "host", "path", "status", "duration_ms", "route", "worker",
    "upstream", "bytes_in", "bytes_out", "client_ip",
}  # fmt: skip


def test_one_access_line_per_request_without_secrets(stack: Stack) -> None:
    with capture_logs() as logs, stack.client() as client:
        response = client.post(
            "/echo/path?token=s3cret-query",
            headers={
                "host": "alpha.localhost",
                "cookie": "session=s3cret-cookie",
                "authorization": "Bearer s3cret-auth",
            },
            content=b"12345",
        )
        # The line is written after the response went out: wait for it, within a deadline.
        wait_until(lambda: any(line["event"] == "request" for line in logs), what="access line")
    assert response.status_code == 200
    access = [line for line in logs if line["event"] == "request"]
    assert len(access) == 1
    (line,) = access
    assert set(line) >= ACCESS_FIELDS
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["path"] == "/echo/path"
    assert line["route"] == "subdomain" and line["worker"] == "alpha"
    assert line["status"] == 200 and line["method"] == "POST"
    assert line["bytes_in"] == 5 and line["bytes_out"] == len(response.content)
    assert line["upstream"] == stack.alpha_url
    assert "s3cret" not in repr(line)


def test_error_access_line_carries_the_clients_request_id(stack: Stack) -> None:
    with capture_logs() as logs, stack.client() as client:
        response = client.get(
            "/reset-me", headers={"host": "gone.localhost", "x-request-id": "trace-me"}
        )
        wait_until(lambda: any(line["event"] == "request" for line in logs), what="access line")
    assert response.status_code == 502
    (line,) = [line for line in logs if line["event"] == "request"]
    assert line["request_id"] == "trace-me"
    assert line["status"] == 502


def test_metrics_count_requests_by_route_and_status_class(stack: Stack) -> None:
    def scrape() -> str:
        with stack.client() as client:
            response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    def sample(text: str, name: str, labels: str = "") -> float:
        pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
        match = re.search("(?m)^" + pattern, text)
        return float(match.group(1)) if match else 0.0

    before = scrape()
    with stack.client() as client:
        for _ in range(3):
            client.get("/", headers={"host": "beta.localhost"})
        client.get("/", headers={"host": "nobody.localhost"})
        client.get("/", headers={"host": "gone.localhost"})
    after = scrape()
    ok = 'route="subdomain",status_class="2xx"'
    assert (
        sample(after, "dispatcher_requests_total", ok)
        - sample(before, "dispatcher_requests_total", ok)
        == 3
    )
    missing = 'route="none",status_class="4xx"'
    assert sample(after, "dispatcher_requests_total", missing) > sample(
        before, "dispatcher_requests_total", missing
    )
    assert sample(after, "dispatcher_upstream_errors_total", 'kind="connect"') > sample(
        before, "dispatcher_upstream_errors_total", 'kind="connect"'
    )
    assert "dispatcher_request_duration_seconds_bucket" in after
    assert sample(after, "dispatcher_workers") == 8
    assert "dispatcher_domain_cache_hits_total" in after
    assert "dispatcher_registry_reloads_total" in after
    assert "dispatcher_requests_in_flight" in after
    assert "worker=" not in after  # no per-tenant label unless the operator turns it on


def test_tls_ask_allows_only_hosts_the_platform_serves(stack: Stack) -> None:
    def ask(domain: str | None) -> int:
        params = {} if domain is None else {"domain": domain}
        return httpx.get(f"{stack.url}/tls/ask", params=params, timeout=10).status_code

    assert ask("shop.example.org") == 200  # active custom domain
    assert ask("verified.example.org") == 200
    assert ask("alpha.example.com") == 200  # existing worker under a base domain
    assert ask("pending.example.org") == 404
    assert ask("unknown.example.net") == 404
    assert ask("nobody.example.com") == 404
    assert ask("off.example.com") == 404  # disabled worker
    assert ask("www.example.com") == 404  # reserved name
    assert ask("a.b.example.com") == 404
    assert ask("example.com") == 404
    assert ask("bad_host!") == 404
    assert ask(None) == 400
    # /tls/ask is a control-plane route: on a tenant host it is the tenant's path.
    tenant = httpx.get(
        f"{stack.url}/tls/ask?domain=x", headers={"host": "alpha.localhost"}, timeout=10
    )
    assert tenant.text == "tenant has no such page"
