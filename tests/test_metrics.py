"""GET /metrics: Prometheus text with the API's response times per route template, method and
status, and the process collector; no token needed; absent from the OpenAPI schema."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count(samples: dict[Any, float], method: str, route: str, status: str) -> float:
    key = (
        "whatsched_http_request_duration_seconds_count",
        tuple(sorted({"method": method, "route": route, "status": status}.items())),
    )
    return samples.get(key, 0.0)


async def test_metrics_expose_request_latency_after_a_request(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    before = _samples((await client.get("/metrics")).text)
    missing = uuid.uuid4()

    await client.get("/api/notifications/unread-count", headers=user.headers)
    await client.delete(f"/api/notifications/{missing}", headers=user.headers)
    await client.get(f"/no/such/page/{missing}")
    resp = await client.get("/metrics")

    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE whatsched_http_request_duration_seconds histogram" in resp.text
    after = _samples(resp.text)
    route = "/api/notifications/unread-count"
    assert _count(after, "GET", route, "200") == _count(before, "GET", route, "200") + 1
    # Labelled by the route template, never by the concrete path.
    template = "/api/notifications/{notification_id}"
    assert _count(after, "DELETE", template, "404") == _count(before, "DELETE", template, "404") + 1
    assert _count(after, "GET", "unmatched", "404") == _count(before, "GET", "unmatched", "404") + 1
    assert str(missing) not in resp.text


async def test_metrics_include_the_process_and_shared_metrics(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds"} <= names
    assert {"whatsched_sends", "whatsched_bridge_errors", "whatsched_websocket_connections"} <= names


async def test_metrics_need_no_token_and_are_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    resp = await client.get("/metrics")
    schema = (await client.get("/openapi.json")).json()
    assert resp.status_code == 200
    assert "/metrics" not in schema["paths"]
    assert "/api/metrics" not in schema["paths"]
