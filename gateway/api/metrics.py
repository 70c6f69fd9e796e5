"""GET /metrics: the Prometheus text exposition (gateway/metrics.py has the series)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    # The classic text format (0.0.4): what every Prometheus, old ones included, parses.
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
