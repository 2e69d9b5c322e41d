"""The in-flight cap's metrics: ``cpe_requests_in_flight`` and ``cpe_shed_requests_total``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from app.api.admission import InflightLimit
from app.metrics import gauge


class AdmissionCollector(Collector):
    """The cap's figures, read at scrape time: ``InflightLimit`` counts for itself."""

    def __init__(self, limit: InflightLimit) -> None:
        self.limit = limit

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield gauge(
            "cpe_requests_in_flight", "Prediction and routing requests in progress.", self.limit.inflight
        )
        yield gauge(
            "cpe_inflight_limit",
            "Prediction and routing requests that may be in progress now (CPE_ADMISSION; 0: no cap).",
            self.limit.max_inflight,
        )
        if (lag := getattr(self.limit, "loop_lag_s", None)) is not None:  # the adaptive limit's signal
            yield gauge(
                "cpe_event_loop_lag_seconds",
                "How late the event loop ran a timer, at most, in the adaptive limit's last window: the "
                "wait of requests it had not read yet (CPE_ADMISSION=adaptive).",
                lag,
            )
        yield CounterMetricFamily(
            "cpe_shed_requests",
            "Prediction and routing requests refused with a 503 before their body was read "
            "(the in-flight limit was reached).",
            self.limit.shed,
        )
