"""POST /v1/feedback: what really came after a window, for the online learner."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from app.api.deps import LearningDep, LimitsDep, parse_body
from app.api.errors import ERROR_RESPONSES
from app.api.openapi import json_body
from app.api.responses import OrjsonResponse
from app.learning.feedback import FeedbackFull, FeedbackUnavailable
from app.schemas import FeedbackAccepted, FeedbackRequest, Message, PredictRequest
from app.wire.decode import windows_of

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])

RESPONSES = {
    **ERROR_RESPONSES,
    404: {"model": Message, "description": "This service does not learn (CPE_LEARNING_ENABLED=false)."},
    429: {"model": Message, "description": "The in-process feedback buffer is full; retry later."},
}


@router.post(
    "",
    status_code=202,
    response_model=FeedbackAccepted,
    responses=RESPONSES,
    openapi_extra=json_body(FeedbackRequest),
)
async def feedback(request: Request, limits: LimitsDep, learning: LearningDep) -> OrjsonResponse:
    """Report the context that really followed a window; 202 once it is stored for the learner.

    Send the window (`flow_key`, `contexts`), or the `prediction_id` of a prediction this replica made.
    An id this replica does not know (another replica answered, or it was forgotten) is a 422 naming
    `prediction_id`: send the window instead."""
    if learning is None:
        raise HTTPException(404, "this service does not learn online (CPE_LEARNING_ENABLED=false)")
    body = await parse_body(request, FeedbackRequest, limits)
    if body.prediction_id is not None:
        window = learning.recent.get(body.prediction_id)
        if window is None:
            raise _unknown_prediction(body.prediction_id)
        if body.actual["timestamp"] < window.timestamps[-1]:
            raise _actual_too_early(body.actual["timestamp"], int(window.timestamps[-1]))
    else:
        assert body.flow_key is not None and body.contexts is not None  # the model's validator says so
        [window] = windows_of(
            [PredictRequest.model_construct(flow_key=body.flow_key, contexts=body.contexts)]
        )
    sample = learning.feedback(window, body.actual["timestamp"], body.actual["features"])
    try:
        sample_id = await learning.store.append(sample)
    except (FeedbackFull, FeedbackUnavailable) as exc:
        learning.metrics.feedback.labels(result="refused").inc()
        status = 429 if isinstance(exc, FeedbackFull) else 503
        return OrjsonResponse(
            {"detail": str(exc)}, status_code=status, headers={"retry-after": str(exc.retry_after_s)}
        )
    learning.metrics.feedback.labels(result="accepted").inc()
    return OrjsonResponse(FeedbackAccepted(id=sample_id).model_dump(), status_code=202)


def _unknown_prediction(prediction_id: str) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "unknown_prediction",
                "loc": ("body", "prediction_id"),
                "msg": "this replica does not know this prediction_id (another replica made the "
                "prediction, or it was forgotten): send flow_key and contexts instead",
                "input": prediction_id,
            }
        ]
    )


def _actual_too_early(timestamp: int, last: int) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "actual_before_window",
                "loc": ("body", "actual", "timestamp"),
                "msg": f"actual.timestamp {timestamp} is before the window's last context ({last})",
                "input": timestamp,
            }
        ]
    )
