"""The dispatcher end to end: every route kind, the error codes, the header rules, streaming.

Real uvicorn servers on loopback (see ``conftest.py``), once with SQLite and once with a
throwaway Postgres as the registry.
"""

from __future__ import annotations

import hashlib
import socket
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.tenant import pattern_bytes


def echo(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def header(data: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in data["headers"] if key == name]


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


# -- route kinds ------------------------------------------------------------------------------


def test_subdomain_route_reaches_its_worker(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/echo/a/b?x=1", headers={"host": "beta.localhost:8080"}))
    assert data["tenant"] == "beta"
    assert data["raw_path"] == "/echo/a/b"
    assert data["query"] == "x=1"
    assert header(data, "x-dispatch-worker") == ["beta"]
    assert header(data, "x-dispatch-route") == ["subdomain"]


def test_subdomain_under_a_second_base_domain_routes(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/echo", headers={"host": "BETA.Example.COM."}))
    assert data["tenant"] == "beta"


def test_custom_domain_routes_to_its_worker(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/echo/x", headers={"host": "shop.example.org"}))
    assert data["tenant"] == "beta"
    assert header(data, "x-dispatch-route") == ["custom_domain"]
    assert header(data, "x-forwarded-host") == ["shop.example.org"]


def test_verified_custom_domain_routes(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/echo", headers={"host": "verified.example.org"}))
    assert data["tenant"] == "alpha"


@pytest.mark.parametrize("host", ["pending.example.org", "failed.example.org"])
def test_custom_domain_that_is_not_active_or_verified_does_not_route(
    stack: Stack, host: str
) -> None:
    with stack.client() as client:
        response = client.get("/echo", headers={"host": host})
    assert response.status_code == 404
    assert error_of(response)["code"] == "domain_not_found"


def test_exact_custom_domain_beats_the_wildcard(stack: Stack) -> None:
    # gamma.localhost is a registered custom domain of beta while worker gamma exists too:
    # the exact entry wins.
    with stack.client() as client:
        data = echo(client.get("/echo", headers={"host": "gamma.localhost"}))
    assert data["tenant"] == "beta"
    assert header(data, "x-dispatch-route") == ["custom_domain"]


def test_custom_domain_may_use_a_reserved_label(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/echo", headers={"host": "www.localhost"}))
    assert data["tenant"] == "beta"


def test_path_route_forwards_the_rest_of_the_path_raw(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/dispatch/beta/echo/a%2Fb/c?q=1&r=%20"))
    assert data["tenant"] == "beta"
    assert data["raw_path"] == "/echo/a%2Fb/c"
    assert data["query"] == "q=1&r=%20"
    assert header(data, "x-dispatch-route") == ["path"]
    assert header(data, "x-forwarded-prefix") == ["/dispatch/beta"]


def test_api_path_route_and_bare_worker_path(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.post("/api/dispatch/alpha", content=b"hi"))
    assert data["tenant"] == "alpha"
    assert data["raw_path"] == "/"
    assert data["method"] == "POST"
    assert data["body_bytes"] == 2
    assert header(data, "x-forwarded-prefix") == ["/api/dispatch/alpha"]


def test_path_route_worker_segment_is_decoded_and_lowercased(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/dispatch/%42eta/echo"))
    assert data["tenant"] == "beta"


def test_query_route_strips_every_worker_parameter_and_keeps_the_rest(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post(
            "/dispatch?a=1&worker=beta&b=%2F+x&wor%6Ber=alpha&c", content=b"payload"
        )
    data = echo(response)
    assert data["tenant"] == "beta"
    assert data["raw_path"] == "/"
    assert data["query"] == "a=1&b=%2F+x&c"
    assert data["body_bytes"] == 7
    assert header(data, "x-dispatch-route") == ["query"]
    assert header(data, "x-forwarded-prefix") == ["/dispatch"]


def test_get_query_route_dispatches(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/api/dispatch?worker=alpha")
    assert response.status_code == 200
    assert response.text == "hello from alpha\n"


def test_tenant_host_owns_health_and_every_other_path(stack: Stack) -> None:
    with stack.client() as client:
        health = client.get("/health", headers={"host": "alpha.localhost"})
        dispatch = client.get("/dispatch", headers={"host": "beta.localhost"})
    assert health.status_code == 404 and health.text == "tenant has no such page"
    assert dispatch.status_code == 404 and dispatch.text == "tenant has no such page"


def test_upstream_base_path_is_prepended(stack: Stack) -> None:
    with stack.client() as client:
        on_host = echo(client.get("/x/y?q", headers={"host": "based.localhost"}))
        on_query = echo(client.post("/dispatch?worker=based"))
    assert on_host["raw_path"] == "/echo/base/x/y"
    assert on_host["query"] == "q"
    assert on_query["raw_path"] == "/echo/base/"


# -- control plane ------------------------------------------------------------------------------


def test_control_plane_answers_on_control_hosts(stack: Stack) -> None:
    with stack.client() as client:
        root = client.get("/", headers={"host": "localhost:8080"})
        health = client.get("/health")
        info = client.get("/dispatch", headers={"host": "example.com"})
    assert root.status_code == 200
    assert root.json()["service"] == "dispatcher"
    assert root.json()["base_domains"] == ["localhost", "example.com"]
    assert root.json()["docs"] == "/docs"
    assert health.json()["status"] == "ok"
    assert info.json()["workers"] == 8
    assert "x-request-id" in health.headers


def test_control_plane_unknown_path_and_method(stack: Stack) -> None:
    with stack.client() as client:
        missing = client.get("/nope")
        wrong = client.post("/health")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    assert wrong.status_code == 405
    assert error_of(wrong)["code"] == "method_not_allowed"


# -- routing errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        pytest.param(
            {"url": "/", "headers": {"host": "bad_host!"}}, 400, "invalid_host", id="host"
        ),
        pytest.param(
            {"url": "/", "headers": {"host": "www.example.com"}},
            400,
            "reserved_worker_name",
            id="reserved-subdomain",
        ),
        pytest.param({"url": "/dispatch/admin/x"}, 400, "reserved_worker_name", id="reserved-path"),
        pytest.param({"url": "/dispatch/-bad-/x"}, 400, "invalid_worker_name", id="invalid-path"),
        pytest.param(
            {"url": "/dispatch?worker=a_b"}, 400, "invalid_worker_name", id="invalid-query"
        ),
        pytest.param({"url": "/dispatch?worker="}, 400, "missing_worker", id="empty-query"),
        pytest.param(
            {"url": "/", "headers": {"host": "nobody.localhost"}},
            404,
            "worker_not_found",
            id="unknown-subdomain",
        ),
        pytest.param(
            {"url": "/", "headers": {"host": "off.localhost"}},
            404,
            "worker_not_found",
            id="disabled-worker",
        ),
        pytest.param({"url": "/dispatch/nobody/"}, 404, "worker_not_found", id="unknown-path"),
        pytest.param(
            {"url": "/", "headers": {"host": "a.b.localhost"}},
            404,
            "domain_not_found",
            id="two-labels",
        ),
        pytest.param(
            {"url": "/", "headers": {"host": "unknown.example.net"}},
            404,
            "domain_not_found",
            id="unknown-domain",
        ),
        pytest.param(
            {"url": "/dispatch/alpha/a/%2e%2E/x"}, 400, "invalid_request", id="dot-segments"
        ),
        pytest.param(
            {"url": "/", "headers": {"host": "gone.localhost"}},
            502,
            "upstream_unavailable",
            id="refused",
        ),
    ],
)
def test_errors_follow_the_json_contract(
    stack: Stack, request_kwargs: dict[str, Any], status: int, code: str
) -> None:
    with stack.client() as client:
        response = client.request("GET", **request_kwargs)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in error["message"] and "Errno" not in error["message"]


def test_post_to_dispatch_without_worker_is_missing_worker(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post("/dispatch?x=1", content=b"{}")
    assert response.status_code == 400
    assert error_of(response)["code"] == "missing_worker"


def test_error_keeps_a_valid_client_request_id(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(
            "/", headers={"host": "nobody.localhost", "x-request-id": "client-id.1"}
        )
    assert response.headers["x-request-id"] == "client-id.1"
    assert error_of(response)["request_id"] == "client-id.1"


def test_body_over_the_workers_limit_is_413(stack: Stack) -> None:
    with stack.client() as client:
        fixed = client.post("/echo", headers={"host": "small.localhost"}, content=b"x" * 11)
        chunked = client.post(
            "/echo", headers={"host": "small.localhost"}, content=iter([b"x" * 6, b"y" * 6])
        )
        within = client.post("/echo", headers={"host": "small.localhost"}, content=b"x" * 10)
    assert fixed.status_code == 413
    assert error_of(fixed)["code"] == "payload_too_large"
    assert chunked.status_code == 413
    assert error_of(chunked)["code"] == "payload_too_large"
    assert echo(within)["body_bytes"] == 10


def test_oversized_request_headers_are_431(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/echo", headers={"host": "alpha.localhost", "x-big": "a" * 40_000})
    assert response.status_code == 431
    assert error_of(response)["code"] == "headers_too_large"


# -- header rules -------------------------------------------------------------------------------


def test_request_headers_sent_upstream(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(
            client.get(
                "/echo",
                headers={
                    "host": "alpha.localhost:8080",
                    "connection": "keep-alive, x-drop-me",
                    "x-drop-me": "secret",
                    "keep-alive": "timeout=5",
                    "proxy-authorization": "Basic Zm9vOmJhcg==",
                    "te": "trailers",
                    "x-dispatch-worker": "beta",
                    "x-dispatch-evil": "1",
                    "x-request-id": "bad id with spaces",
                    "cookie": "a=b",
                },
            )
        )
    names = [key for key, _ in data["headers"]]
    for dropped in ("x-drop-me", "keep-alive", "proxy-authorization", "te", "x-dispatch-evil"):
        assert dropped not in names
    assert header(data, "x-dispatch-worker") == ["alpha"]
    assert header(data, "cookie") == ["a=b"]
    assert header(data, "host") == [stack.alpha_url.removeprefix("http://")]
    assert header(data, "x-forwarded-host") == ["alpha.localhost:8080"]
    assert header(data, "x-forwarded-proto") == ["http"]
    assert header(data, "via") == ["1.1 dispatcher"]
    (request_id,) = header(data, "x-request-id")
    assert request_id != "bad id with spaces" and 1 <= len(request_id) <= 128
    assert "x-forwarded-prefix" not in names


def test_request_id_is_kept_when_valid_and_echoed(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get(
            "/echo", headers={"host": "alpha.localhost", "x-request-id": "abc-123_x.y"}
        )
    assert header(echo(response), "x-request-id") == ["abc-123_x.y"]
    assert response.headers.get_list("x-request-id") == ["abc-123_x.y"]


def test_forwarded_for_chain_from_a_trusted_peer_is_extended(stack: Stack) -> None:
    # The test client connects from 127.0.0.1, a trusted proxy by default.
    with stack.client() as client:
        data = echo(
            client.get(
                "/echo",
                headers={
                    "host": "alpha.localhost",
                    "x-forwarded-for": "203.0.113.7",
                    "x-forwarded-proto": "https",
                    "x-forwarded-host": "alpha.example.com",
                },
            )
        )
    assert header(data, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert header(data, "x-forwarded-proto") == ["https"]
    assert header(data, "x-forwarded-host") == ["alpha.example.com"]


def test_preserve_host_sends_the_clients_host(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.get("/echo", headers={"host": "keephost.localhost:8080"}))
    assert header(data, "host") == ["keephost.localhost:8080"]


def test_response_headers_hop_by_hop_removed_and_one_request_id(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/hop", headers={"host": "alpha.localhost", "x-request-id": "r1"})
    assert response.status_code == 200
    assert response.headers["x-kept"] == "yes"
    assert "x-secret" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers.get_list("x-request-id") == ["r1"]


def test_redirects_are_not_followed_and_location_is_prefixed_on_path_routes(
    stack: Stack,
) -> None:
    with stack.client() as client:
        on_path = client.get("/dispatch/alpha/redirect?to=/login")
        absolute = client.get("/dispatch/alpha/redirect?to=https://elsewhere.test/x")
        on_host = client.get("/redirect?to=/login", headers={"host": "alpha.localhost"})
    assert on_path.status_code == 302
    assert on_path.headers["location"] == "/dispatch/alpha/login"
    assert on_path.headers["set-cookie"] == "session=abc; Path=/dispatch/alpha; HttpOnly"
    assert absolute.headers["location"] == "https://elsewhere.test/x"
    assert on_host.headers["location"] == "/login"


def test_upstream_errors_pass_through_untouched(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/status?code=503", headers={"host": "alpha.localhost"})
    assert response.status_code == 503
    assert response.text == "upstream says 503"
    assert response.headers["content-type"] == "text/plain"


def test_head_request_gets_headers_only(stack: Stack) -> None:
    with stack.client() as client:
        response = client.head("/bytes?n=1000", headers={"host": "alpha.localhost"})
    assert response.status_code == 200
    assert response.headers["content-length"] == "1000"
    assert response.content == b""


# -- streaming ----------------------------------------------------------------------------------


def test_server_sent_events_arrive_event_by_event(stack: Stack) -> None:
    key = uuid.uuid4().hex
    with (
        stack.client() as client,
        client.stream("GET", f"/sse?key={key}", headers={"host": "alpha.localhost"}) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.iter_lines()
        assert next(lines) == "data: one"
        # Event two is only produced after this release: event one came through on its own.
        with httpx.Client() as other:
            other.get(f"{stack.alpha_url}/release?key={key}")
        rest = list(lines)
    assert [line for line in rest if line] == ["data: two"]


def test_chunked_download_and_upload_stream_intact(stack: Stack) -> None:
    size = 3 * 1024 * 1024 + 17
    with stack.client() as client:
        download = client.get(f"/bytes?n={size}&chunked=1", headers={"host": "beta.localhost"})
        upload = client.post(
            "/echo", headers={"host": "beta.localhost"}, content=iter([b"a" * 70_000] * 30)
        )
    assert download.content == pattern_bytes(size)
    data = echo(upload)
    assert data["body_bytes"] == 70_000 * 30
    assert data["body_sha256"] == hashlib.sha256(b"a" * 70_000 * 30).hexdigest()
    assert header(data, "transfer-encoding") == ["chunked"]
    assert header(data, "content-length") == []


def test_content_length_is_kept_on_uploads(stack: Stack) -> None:
    with stack.client() as client:
        data = echo(client.put("/echo", headers={"host": "beta.localhost"}, content=b"z" * 5000))
    assert header(data, "content-length") == ["5000"]
    assert data["body_bytes"] == 5000


def test_upstream_connections_are_kept_alive_and_reused(stack: Stack) -> None:
    with stack.client() as client:
        ports = {
            echo(client.get("/echo", headers={"host": "alpha.localhost"}))["client_port"]
            for _ in range(20)
        }
    assert len(ports) == 1


def test_request_with_both_content_length_and_chunked_is_rejected(stack: Stack) -> None:
    # Pinned: uvicorn's parser (llhttp) refuses the ambiguous framing before the dispatcher
    # sees it, so it can never be forwarded with both headers (request smuggling).
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: alpha.localhost\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
