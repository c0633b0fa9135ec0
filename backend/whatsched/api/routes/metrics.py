"""GET /metrics: this process's Prometheus metrics, and the key figures the admin dashboard shows.

/metrics has no authentication, like most exporters, so it is for the operator's scraper only:
keep it off the public internet (bind the API privately, or have the reverse proxy refuse
/metrics from outside). Figures are per process; with several API processes, scrape each one.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from pydantic import BaseModel, Field

from whatsched.metrics import BRIDGE_ERRORS, SENDS

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    # The default registry: our shared objects plus the process (memory, CPU), platform and GC collectors.
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


class SystemFigures(BaseModel):
    """What the metrics registry of the answering API process says right now."""

    sends_by_result: dict[str, int] = Field(description="deliveries finished by the dispatcher, by result")
    send_success_rate: float | None = Field(description="sent / (sent + failed); null before any")
    websocket_connections: int = Field(description="authenticated WebSocket connections open in this process")
    bridge_errors: dict[str, int] = Field(description="errors answered by the WhatsApp bridge, by code")
    memory_bytes: int | None = Field(description="resident memory of this process (null where not measurable)")
    cpu_seconds: float | None = Field(description="CPU time this process has used")


def _by_label(families: Iterable[Metric], label: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for family in families:
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels[label]] = int(sample.value)
    return counts


def system_figures() -> SystemFigures:
    sends = _by_label(SENDS.collect(), "result")
    finished = sends.get("sent", 0) + sends.get("failed", 0)
    memory = REGISTRY.get_sample_value("process_resident_memory_bytes")
    sockets = REGISTRY.get_sample_value("whatsched_websocket_connections")
    return SystemFigures(
        sends_by_result=sends,
        send_success_rate=round(sends.get("sent", 0) / finished, 4) if finished else None,
        websocket_connections=int(sockets or 0),
        bridge_errors=_by_label(BRIDGE_ERRORS.collect(), "code"),
        memory_bytes=int(memory) if memory is not None else None,
        cpu_seconds=REGISTRY.get_sample_value("process_cpu_seconds_total"),
    )
