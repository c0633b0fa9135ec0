"""Prometheus metrics shared by the API, the dispatcher and the realtime hub (the guide's list:
API response time, send success rate, active WebSocket connections, memory and CPU, WhatsApp errors).
Process memory and CPU come from prometheus-client's default process collector."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUEST_LATENCY = Histogram(
    "whatsched_http_request_duration_seconds",
    "API response time per route",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SENDS = Counter("whatsched_sends_total", "Deliveries finished by the dispatcher, by result", ["result"])
BRIDGE_ERRORS = Counter("whatsched_bridge_errors_total", "Errors answered by the WhatsApp bridge, by code", ["code"])
WS_CONNECTIONS = Gauge("whatsched_websocket_connections", "Authenticated WebSocket connections open in this process")
