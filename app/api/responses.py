"""A JSON response rendered by orjson, which also writes numpy arrays without converting them first."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.responses import JSONResponse


def _default(value: Any) -> Any:
    # orjson hands over the numpy arrays it cannot write directly (not C-contiguous, odd dtypes)
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def dumps(content: Any) -> bytes:
    """``content`` as JSON bytes, numpy arrays included: the body of an OrjsonResponse, or a frame."""
    return orjson.dumps(content, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


class OrjsonResponse(JSONResponse):
    """JSON via orjson: several times faster than ``json.dumps`` on prediction results.

    The prediction handlers return one directly with the body built as a dict, so nothing validates or
    re-encodes the response on the hot path; their ``response_model`` only documents it.
    """

    def render(self, content: Any) -> bytes:
        return dumps(content)
