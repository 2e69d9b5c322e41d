"""Continuous prediction: observed flows forecast as their observations arrive, scored when the next arrives.

``Forecasts`` (``app/forecasts/service.py``) is the part the app wires: it takes the flows that ingest
touched, forecasts them in bulk through the engine, keeps each flow's newest forecast and running score
(``store``), publishes ``FlowPrediction`` messages (``stream``), scores each forecast against the
observation that follows it (``scores``) and hands that pair to the learner (``labels``).
"""

from app.forecasts.service import Forecasts

__all__ = ["Forecasts"]
