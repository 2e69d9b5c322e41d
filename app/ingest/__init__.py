"""Ingest: observations of the network, from every door, onto the server-side flow windows."""

from app.ingest.service import IngestMetrics, IngestService, OnApplied

__all__ = ["IngestMetrics", "IngestService", "OnApplied"]
