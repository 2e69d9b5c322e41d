"""The service's configuration: one ``Settings`` object read from ``CPE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MODEL_KINDS = ("lstm", "transformer", "hybrid")


def _shipped_checkpoints() -> Path:
    # imported here so that reading the settings (e.g. `cpe --help`) does not import torch
    from models.checkpoint import CHECKPOINT_DIR

    return CHECKPOINT_DIR


class Settings(BaseSettings):
    """Everything an operator can set; each field is ``CPE_<NAME>`` in the environment."""

    # errors leave out the values: one of them may be CPE_API_KEYS, and they end up in start-up logs
    model_config = SettingsConfigDict(
        env_prefix="CPE_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # -- server -----------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        description="Interface to listen on. Loopback by default so that `make run` exposes nothing; "
        "containers set CPE_HOST=0.0.0.0.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes; each loads its own models and runs its own engine.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the server and of the `cpe` loggers."
    )
    shutdown_timeout_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="On SIGTERM, how long requests in flight may take to finish before they are cancelled.",
    )
    access_log: bool = Field(
        default=False, description="Log every request (costs throughput; off by default)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines as `text`, or `json`: one object per line with `ts`, `level`, `logger`, "
        "`message` and the `request_id` (also echoed in the `X-Request-ID` response header).",
    )

    # -- models -----------------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the models run; `auto` takes CUDA when torch sees a GPU."
    )
    model: str = Field(default="lstm", description="Model kind answering requests that name no model.")
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=MODEL_KINDS,
        description="Model kinds to load, comma-separated in the environment (e.g. `lstm,hybrid`).",
    )
    checkpoint_dir: Path = Field(
        default_factory=_shipped_checkpoints,
        description="Directory holding `<kind>.safetensors` per loaded kind; default: the shipped ones.",
    )
    gil_switch_us: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="The process's GIL switch interval while the engine runs, in µs (0: Python's 5 ms). A "
        "forward pass hands the GIL back to the event loop at each numpy call and torch op; beside a busy "
        "loop it waits up to this long each time (`python -m scripts.bench_observe --gil`). 100 lets passes "
        "overlap the loop where the inference thread has a core of its own; every thread busy in Python "
        "(the loop, the online learner) pays the more frequent switches.",
    )
    torch_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Intra-op threads of the inference thread. One leaves a core for the event loop.",
    )

    # -- access -------------------------------------------------------------------------------
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="API keys and their scopes, `key:scope` entries separated by `;` (e.g. "
        "`k1...:read;k2...:admin`). Scopes: `read` (predictions, routing, streams, model list) < `write` "
        "(feedback) < `admin` (model changes), each granting the ones before it. Keys: 16+ characters, no "
        "whitespace or `:;,`. Empty: no authentication (a warning at start-up). See SECURITY.md.",
    )

    # -- request limits -----------------------------------------------------------------------
    max_window: int = Field(
        default=256, ge=1, le=100_000, description="Most contexts in one request's window."
    )
    max_batch: int = Field(
        default=1024, ge=1, le=100_000, description="Most flows in one /v1/predict/batch request."
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; a larger one is a 413.",
    )

    # -- engine -----------------------------------------------------------------------------
    engine_max_batch: int = Field(
        default=256, ge=1, le=65_536, description="Most windows in one forward pass."
    )
    engine_max_wait_us: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Extra time a batch may wait to grow, in µs. 0 dispatches whatever is queued as soon "
        "as the inference thread is free: batches still form from what queues up during a forward pass.",
    )
    queue_size: int = Field(
        default=2048,
        ge=1,
        description="Windows that may wait for the engine; beyond that requests get a 503.",
    )
    engine_latency_budget_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=60_000.0,
        description="A window whose expected wait for the engine (the passes queued before it, its own "
        "included, from measured pass times) exceeds this many ms gets a 503 at once (about half the p99 "
        "wanted under overload; python -m scripts.bench_overload checks it). 0: shed only when the queue "
        "is full.",
    )
    admission: Literal["adaptive", "fixed"] = Field(
        default="adaptive",
        description="How many prediction and routing requests may be in progress at once; one more gets a "
        "503 before its body is read, which keeps the event loop's backlog short under overload. "
        "`adaptive`: a limit that follows the latency of the admitted requests (AIMD towards "
        "CPE_ADMISSION_LATENCY_MS, up to CPE_MAX_INFLIGHT, under CPE_MIN_INFLIGHT only while requests are "
        "refused), so that a CPU replica sheds early and a GPU forms large batches with no tuning; `fixed`: "
        "CPE_MAX_INFLIGHT.",
    )
    admission_latency_ms: float = Field(
        default=15.0,
        gt=0.0,
        le=60_000.0,
        description="CPE_ADMISSION=adaptive: the p90 latency wanted of admitted requests (in the service, "
        "plus the event loop's lag); the limit shrinks above it, and grows below half of it while requests "
        "are held back. Three times the latency the service shows unloaded instead, when that is longer (a "
        "slow model). Under 3x overload on a 2-CPU replica 15 admitted more requests than 25, with a shorter "
        "p99 (two to three times the p90 aimed at; README, Access and limits).",
    )
    min_inflight: int = Field(
        default=32,
        ge=1,
        le=1_000_000,
        description="CPE_ADMISSION=adaptive: the limit shrinks under this only while more requests come "
        "than it admits (overload: down to an eighth of it, so that the event loop keeps time for the "
        "admitted requests besides its refusals), and is back at it in the first 50 ms without a refusal; "
        "32 keeps a client pool of 32 connections from being refused however slow the machine. A batch "
        "request counts as one.",
    )
    max_inflight: int = Field(
        default=1024,
        ge=0,
        le=1_000_000,
        description="CPE_ADMISSION=fixed: prediction and routing requests in progress at once (0: no cap; "
        "16 keeps a 2-CPU replica's latency short under overload, see the README's figures). "
        "CPE_ADMISSION=adaptive: the most the limit grows to.",
    )
    retry_after_s: int = Field(
        default=1, ge=0, le=3600, description="Retry-After of a 503 sent under overload."
    )

    # -- prediction cache -------------------------------------------------------------------------
    cache_url: str = Field(
        default="memory://",
        description="Prediction cache: `memory://` (in this process only) or `redis://host:port/db` (the "
        "in-process tier in front of Redis, which every replica shares).",
    )
    cache_max_entries: int = Field(
        default=50_000,
        ge=1,
        le=100_000_000,
        description="Most predictions the in-process tier holds (the README's Memory paragraph says how "
        "much each takes).",
    )
    cache_strategy: Literal["lru", "lfu", "ttl"] = Field(
        default="lru",
        description="What the full in-process tier evicts: the least recently used entry, the least "
        "frequently used, or the one nearest expiry. Expired entries always go first.",
    )
    cache_ttl_ms: int = Field(
        default=60_000, ge=1, le=7 * 24 * 3_600_000, description="How long a prediction stays cached, in ms."
    )
    cache_ttl_adaptive: bool = Field(
        default=False,
        description="Each cached forecast lives as long as its flow is predictable rather than "
        "CPE_CACHE_TTL_MS: its horizon in time, stretched for a narrow forecast, shortened for a wide one, "
        "within CPE_CACHE_TTL_MIN_MS..CPE_CACHE_TTL_MAX_MS (app/cache/ttl.py; the README has hit rates).",
    )
    cache_ttl_min_ms: int = Field(
        default=500,
        ge=1,
        le=7 * 24 * 3_600_000,
        description="Shortest adaptive TTL of a cached forecast, ms.",
    )
    cache_ttl_max_ms: int = Field(
        default=600_000,
        ge=1,
        le=7 * 24 * 3_600_000,
        description="Longest adaptive TTL of a cached forecast, ms.",
    )
    cache_timeout_ms: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Connect and read timeout of a Redis round-trip, in ms. A failed one makes requests skip "
        "Redis for a short backoff, then try it again.",
    )

    # -- routing -----------------------------------------------------------------------------
    max_routes: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Most candidate routes in one /v1/routing/recommend request or route group.",
    )
    failure_rate: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="A route counts as failing when its predicted loss_rate + error_rate exceeds this...",
    )
    failure_latency_factor: float = Field(
        default=3.0,
        gt=1.0,
        le=1000.0,
        description="...or its predicted latency exceeds this many times the median latency of its window.",
    )
    breaker_threshold: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="Failure probability above which a route gets a CircuitBreakerPrediction message.",
    )
    weight_temperature: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="Load-balancing weights: 0 spreads load in proportion to each route's score (times its "
        "chance not to fail); above 0, by a softmax of the scores at this temperature (lower: sharper; "
        "README, Routing).",
    )
    flow_key_format: Literal["hex", "bytes"] = Field(
        default="hex",
        description="Flow keys in routing messages: `hex` (64 characters) or `bytes` (a list of 32 integers, "
        "the serde form of a Rust `[u8; 32]`). HTTP answers always use hex.",
    )

    # -- bus and WebSockets ---------------------------------------------------------------------
    bus_url: str = Field(
        default="memory://",
        description="Bus of the routing messages: `memory://` (this process only) or `redis://host:port/db` "
        "(Redis pub/sub, shared by every replica).",
    )
    bus_channel: str = Field(
        default="cpe:routing",
        min_length=1,
        description="Bus channel of the routing messages; replicas (and the ALM) on the same one see them.",
    )
    ws_queue_size: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Messages that may wait for one WebSocket client: a routing subscriber that falls "
        "further behind loses its oldest; a prediction socket stops reading while this many are in flight.",
    )
    ws_max_frame_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest WebSocket frame (message) accepted; a larger one closes its socket with 1009.",
    )
    ws_rate_per_s: float = Field(
        default=2000.0,
        gt=0.0,
        description="Frames a WebSocket client may send per second on average (a token bucket per socket). "
        "A frame over the rate is not carried out: it gets an error with status 429 and `retry_after_s`.",
    )
    ws_rate_burst: int = Field(
        default=2000,
        ge=1,
        description="Frames a WebSocket client may send at once above the rate. A client refused this many "
        "frames in a row is closed with 1008.",
    )
    ws_heartbeat_s: float = Field(
        default=15.0, gt=0.0, le=3600.0, description="Seconds between heartbeat frames on a routing socket."
    )
    ws_compression: bool = Field(
        default=False,
        description="Offer permessage-deflate on WebSockets: less bandwidth, but every routing message is "
        "then compressed once per subscriber.",
    )

    # -- online learning ----------------------------------------------------------------------
    learning_enabled: bool = Field(
        default=True,
        description="Learn from POST /v1/feedback and roll out better versions. Without feedback the learner "
        "only waits; set false to refuse feedback (404) and keep the shipped models.",
    )
    learning_url: str = Field(
        default="memory://",
        description="Where feedback and model versions live: `memory://` (this process learns alone from "
        "its own feedback) or `redis://host:port/db` (a Redis Stream every replica appends to, one learner "
        "at a time by lease, new weights published to every replica; needs CPE_BUS_URL=redis:// too).",
    )
    learning_prefix: str = Field(
        default="cpe:learn:",
        min_length=1,
        description="Prefix of the Redis keys of the feedback stream, lease, versions and their weights.",
    )
    models_channel: str = Field(
        default="cpe:models",
        min_length=1,
        description="Bus channel announcing new model versions; every replica on it hot-loads them.",
    )
    learning_hints_channel: str = Field(
        default="cpe:learn:hints",
        min_length=1,
        description="Bus channel of AdaptationFeedback's learning-rate hints: every replica publishes the "
        "hints it ingests there, and the replica holding the learner's lease hands them to its tuner.",
    )
    feedback_buffer: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="In-process feedback (learning_url memory://) waiting for the learner; beyond it "
        "feedback is refused with 429 + Retry-After, never dropped.",
    )
    feedback_stream_maxlen: int = Field(
        default=200_000,
        ge=1_000,
        description="Entries the Redis feedback stream keeps (approximately); older ones are trimmed after "
        "the learner has read them into its replay buffer.",
    )
    recent_predictions: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Windows of recent predictions each replica remembers for feedback by prediction_id.",
    )
    replay_capacity: int = Field(
        default=20_000,
        ge=64,
        le=10_000_000,
        description="Feedback samples the replay buffer holds for training; the oldest go first.",
    )
    replay_validation: int = Field(
        default=512,
        ge=16,
        le=100_000,
        description="The most recent feedback samples, held back from training to compare versions on.",
    )
    learning_min_samples: int = Field(
        default=256,
        ge=1,
        description="Training samples needed (beyond the held-back ones) before the first step.",
    )
    learning_batch: int = Field(default=32, ge=1, le=4096, description="Samples per training step.")
    learning_rate: float = Field(
        default=3e-4, gt=0.0, le=1.0, description="Initial learning rate (AdamW); the tuner moves it."
    )
    learning_rate_min: float = Field(default=1e-5, gt=0.0, le=1.0, description="Lowest learning rate.")
    learning_rate_max: float = Field(default=3e-3, gt=0.0, le=1.0, description="Highest learning rate.")
    learning_steps_per_s: float = Field(
        default=20.0,
        gt=0.0,
        le=10_000.0,
        description="Most training steps per second (the tuner slows down to a tenth of it while the "
        "validation loss does not improve): bounds the CPU the learner takes from serving.",
    )
    learning_eval_steps: int = Field(
        default=100,
        ge=1,
        description="Training steps between comparisons of the trained copy with the serving version.",
    )
    learning_min_improvement: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description="A trained copy goes live when its loss on the held-back feedback is this fraction below "
        "the serving version's.",
    )
    learning_rollback_margin: float = Field(
        default=0.05,
        ge=0.0,
        le=10.0,
        description="A trained copy this fraction worse than the serving version is thrown away (rolled back "
        "to the serving weights) rather than trained on.",
    )
    learning_lease_ttl_ms: int = Field(
        default=3_000,
        ge=100,
        le=600_000,
        description="Expiry of the learner's lease in Redis; it renews every third of it. A replica takes "
        "over this long after the learner died.",
    )
    learning_keep_versions: int = Field(
        default=10, ge=2, le=1_000, description="Model versions whose weights are kept for rollback."
    )
    learning_layers: Literal["head", "all"] = Field(
        default="head",
        description="What learns online: `head` (the final norm and output head; two thirds of the time per "
        "step with the default LSTM, and the offline training's feature extraction is kept) or `all` the "
        "weights.",
    )
    learning_threads: int = Field(
        default=1, ge=1, le=256, description="Intra-op threads of the training thread."
    )

    # -- continuous prediction ------------------------------------------------------------------
    predict_on_observe: bool = Field(
        default=True,
        description="Forecast observed flows as their observations arrive (in bulk, each flow once per "
        "round on its newest window), keep each flow's newest forecast, publish it on "
        "/v1/stream/predictions, score it against the next observation and send that pair to the learner.",
    )
    forecast_url: str = Field(
        default="memory://",
        description="Where each observed flow's newest forecast and running score live: `memory://` (this "
        "process), `redis://host:port/db` (shared: every replica's GET /v1/flows/{flow_key} answers them) or "
        "`redis+cluster://host:port` (a Redis Cluster).",
    )
    forecast_prefix: str = Field(
        default="cpe:fc:", description="Prefix of the Redis keys of the flows' forecasts (one hash per flow)."
    )
    forecast_horizon: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Steps ahead each continuous forecast predicts (at most the model's horizon).",
    )
    forecast_batch: int = Field(
        default=1024,
        ge=1,
        le=65_536,
        description="Most flows a round of continuous prediction forecasts: one predict_many on the engine.",
    )
    forecast_pass: int = Field(
        default=0,
        ge=0,
        le=65_536,
        description="Most windows of one forward pass of a round of continuous prediction (at most "
        "CPE_ENGINE_MAX_BATCH), its flows then scored, re-ranked and published pass by pass, each while "
        "the next pass runs: a round's first flows wait for one pass rather than the round's. 0: a round's "
        "passes (of CPE_ENGINE_MAX_BATCH) are finished together. Worth it where the inference thread has "
        "a core of its own, with CPE_GIL_SWITCH_US.",
    )
    forecast_rounds: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Rounds of continuous prediction in flight at once: with 2, one is scored and published "
        "while the next is in the engine. Rounds x batch bounds the windows it puts in the engine's queue.",
    )
    predictions_channel: str = Field(
        default="cpe:predictions",
        description="Bus channel of the FlowPrediction messages; every replica's "
        "/v1/stream/predictions reads it.",
    )
    free_labels_per_s: float = Field(
        default=200.0,
        ge=0.0,
        le=1_000_000.0,
        description="Most scored forecasts a second handed to the online learner as feedback (free labels; "
        "the rest are skipped, counted). 0: none.",
    )
    forecast_score_window: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Scored forecasts the rolling MAE of /v1/stats and cpe_forecast_mae_ms is taken over.",
    )

    # -- route groups ---------------------------------------------------------------------------
    group_url: str = Field(
        default="memory://",
        description="Where route groups (PUT /v1/groups/{group_id}), their routes' newest outlooks and their "
        "last published choice live: `memory://` (this process; lost with it) or `redis://host:port/db` "
        "(every replica sees them, and they survive a restart).",
    )
    group_prefix: str = Field(
        default="cpe:group:", min_length=1, description="Prefix of the Redis keys of the route groups."
    )
    group_timeout_ms: int = Field(
        default=1_000,
        ge=1,
        le=60_000,
        description="Connect and read timeout of the group store's Redis round-trips, in ms; past it the "
        "group endpoints answer 503 + Retry-After and a re-ranking is skipped (counted).",
    )
    max_groups: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Most route groups the store holds; a PUT of one more is refused with 409.",
    )
    groups_channel: str = Field(
        default="cpe:groups",
        min_length=1,
        description="Bus channel on which a replica announces a group it created, changed or deleted, so "
        "that the others reload it at once (they also reload every group every CPE_GROUP_REFRESH_S).",
    )
    group_refresh_s: float = Field(
        default=30.0,
        gt=0.0,
        le=86_400.0,
        description="Seconds between full reloads of the route groups from their store, which catch an "
        "announcement lost on the bus.",
    )
    group_switch_margin: float = Field(
        default=0.25,
        ge=0.0,
        le=10.0,
        description="Hysteresis: a route replaces the group's best only when its score beats the best's by "
        "this fraction (0.25: 25 % higher), or when the best's breaker opens or its forecast is gone.",
    )
    group_switch_now_margin: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        description="Hysteresis: a route that beats the group's best by this fraction (1.0: twice its "
        "score) replaces it at once, without the dwell of CPE_GROUP_MIN_DWELL_MS: a degradation that "
        "large is no measurement noise.",
    )
    group_min_dwell_ms: int = Field(
        default=500,
        ge=0,
        le=86_400_000,
        description="Hysteresis: a route replaces the best only after leading it by the margin at every "
        "re-ranking for this many ms of observation time (under the sampling interval: two observations in "
        "a row); not when the best's breaker opens or its forecast is gone.",
    )
    group_weight_step: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="A group's LoadBalancingUpdate is published when some route's weight moved by more than "
        "this (absolute, weights sum to 1) since the last one published.",
    )
    group_breaker_margin: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Hysteresis of a route's breaker: it opens above CPE_BREAKER_THRESHOLD and closes again "
        "below CPE_BREAKER_THRESHOLD minus this; each change is a CircuitBreakerPrediction.",
    )

    interval_adapt: bool = Field(
        default=True,
        description="Keep the served 90 % intervals calibrated online: adaptive conformal inference on the "
        "free labels (scored continuous forecasts), per model and feature (app/learning/conformal.py).",
    )
    interval_gamma: float = Field(
        default=0.005,
        gt=0.0,
        le=1.0,
        description="Adaptive conformal inference's step: how far each scored forecast moves the working "
        "miss rate. Larger follows shifts faster and holds the live coverage tighter, with a noisier width.",
    )
    interval_window: int = Field(
        default=1000,
        ge=10,
        le=1_000_000,
        description="Recent conformity scores per model whose quantile sets the interval's width.",
    )
    interval_min_scores: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Scored forecasts before the adaptive width is served (until then: the model's own).",
    )
    interval_coverage_window: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Scored forecasts the live coverage of /v1/stats and cpe_interval_coverage is taken "
        "over.",
    )

    residual_adapt: bool = Field(
        default=True,
        description="Learn a small linear correction of the model's next-step latency per observed flow "
        "from its free labels, and serve it while it beats the model alone on the flow's recent labels "
        "(app/learning/residual.py).",
    )
    residual_forget: float = Field(
        default=0.99,
        gt=0.9,
        le=1.0,
        description="The per-flow correction's forgetting factor per label (recursive least squares): "
        "labels older than about 1 / (1 - forget) weigh little.",
    )
    residual_margin: float = Field(
        default=0.03,
        ge=0.0,
        lt=1.0,
        description="How much better than the model alone (relative MAE over the flow's recent labels) the "
        "correction must be before it is served.",
    )
    residual_min_labels: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Labels of a flow before its correction may be served.",
    )
    residual_max_flows: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Flows with a correction kept on this replica (the least recently scored go first; "
        "each is a few kB).",
    )

    # -- observing the network ------------------------------------------------------------------
    flow_url: str = Field(
        default="memory://",
        description="Where each flow's window lives: `memory://` (this process, CPE_MAX_FLOWS at most), "
        "`redis://host:port/db` (in Redis, so that every replica accepts and answers for every flow; run "
        "Redis with appendonly yes) or `redis+cluster://host:port` (a Redis Cluster).",
    )
    flow_window: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Contexts kept per flow (the newest); a prediction from the server-side window reads "
        "them. In memory a flow costs 41 bytes per context plus about 600 (3.2 KB at 64; README).",
    )
    flow_ttl_ms: int = Field(
        default=3_600_000,
        ge=1_000,
        le=30 * 24 * 3_600_000,
        description="A flow with no new observation for this many ms is forgotten.",
    )
    max_flows: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="Most flows the in-process store (CPE_FLOW_URL=memory://) holds; observations that would "
        "start one more are refused whole with 429 + Retry-After until idle flows expire.",
    )
    flow_prefix: str = Field(
        default="cpe:flow:", min_length=1, description="Prefix of the Redis keys of the flow windows."
    )
    flow_timeout_ms: int = Field(
        default=1_000,
        ge=1,
        le=60_000,
        description="Connect and read timeout of the flow store's Redis round-trips, in ms; past it ingest "
        "answers 503 + Retry-After.",
    )
    max_observe_batch: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Most observations in one POST /v1/observe body, WebSocket frame or stream entry.",
    )
    flow_record_interval_ms: int = Field(
        default=1_000,
        ge=1,
        le=3_600_000,
        description="Layer 1 FlowRecords are summed per flow over intervals this long (aligned to the epoch) "
        "into one context: throughput_mbps (bytes over the interval) and connections (distinct components).",
    )
    otlp_metric_names: str = Field(
        default="",
        description="Extra OpenTelemetry metric names mapped onto features, `metric=feature` entries "
        "separated by `,` (e.g. `net.rtt=latency_ms,net.loss=loss_rate`). The feature names themselves are "
        "always recognised.",
    )
    ingest_url: str = Field(
        default="",
        description="A Redis Stream door for collectors: `redis://host:port/db` (or `redis+cluster://`) has "
        "every replica read CPE_INGEST_STREAM in one consumer group; empty: no stream door.",
    )
    ingest_stream: str = Field(
        default="cpe:observe",
        min_length=1,
        description="The Redis Stream collectors XADD observations to: each entry's field `o` holds one "
        "observation or a list of them, as JSON.",
    )
    ingest_group: str = Field(
        default="cpe",
        min_length=1,
        description="The consumer group of the replicas on CPE_INGEST_STREAM; an entry is acknowledged once "
        "applied, and taken over from a dead replica after CPE_INGEST_CLAIM_MS.",
    )
    ingest_claim_ms: int = Field(
        default=5_000,
        ge=100,
        le=3_600_000,
        description="How long a stream entry may stay read but unacknowledged (its replica died) before "
        "another replica takes it over.",
    )

    # -- pattern memory -------------------------------------------------------------------------
    patterns_enabled: bool = Field(
        default=False,
        description="Keep pattern memory: every forecast carries its window's embedding (taken in the same "
        "forward pass), observed windows go into an approximate nearest-neighbour index with what followed "
        "them, and similar_patterns names the nearest. Off unless set: with it, a continuous forecast costs "
        "several times the CPU (a search and an insert each; README, Pattern memory).",
    )
    patterns_capacity: int = Field(
        default=1_000_000,
        ge=1,
        le=100_000_000,
        description="Most windows pattern memory holds, in a ring of four graphs: coming back to a full "
        "one evicts its windows (the oldest quarter) together. About 410 bytes a window at 32 dimensions "
        "(the LSTM's; measured, README), some 670 at 64 (estimated).",
    )
    patterns_snapshot_path: str = Field(
        default="",
        description="Where pattern memory is written now and then and at shutdown, and read back at start "
        "(`<path>.npz` and `<path>.<n>.<graph>.hnsw`); one path per replica. Empty: not kept across "
        "restarts.",
    )
    patterns_snapshot_interval_s: float = Field(
        default=300.0, ge=1.0, le=86_400.0, description="Seconds between snapshots of pattern memory."
    )
    patterns_max_k: int = Field(
        default=100, ge=1, le=10_000, description="Most matches one POST /v1/patterns/search may ask for (k)."
    )
    patterns_analog_k: int = Field(
        default=10,
        ge=1,
        le=1_000,
        description="Stored windows an analog forecast (and similar_patterns) is drawn from.",
    )
    patterns_analog_weight: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of the analog forecast in the latency_ms forecast published as "
        "`metadata.blended_latency_ms` (0: not published). `python -m tools.analogy` measures which weight "
        "helps on held-out traces (README).",
    )
    patterns_analog_max_distance: float = Field(
        default=4.0,
        ge=0.0,
        le=4.0,
        description="Blend only when the matches' mean distance (squared L2 of unit embeddings, 0..4) is at "
        "most this: close analogies only. `python -m tools.analogy` chooses it with the weight.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("models")
    @classmethod
    def _known_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("models must name at least one model kind")
        unknown = [kind for kind in value if kind not in MODEL_KINDS]
        if unknown:
            raise ValueError(f"models: unknown model kind(s) {unknown}; expected some of {list(MODEL_KINDS)}")
        return tuple(dict.fromkeys(value))  # drop duplicates, keep order

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, value: SecretStr) -> SecretStr:
        from app.auth import parse_api_keys  # imported here: reading the settings needs no web framework

        parse_api_keys(value.get_secret_value())  # its errors name an entry by position, never the key
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.model not in self.models:
            raise ValueError(f"model {self.model!r} is not among the loaded models {list(self.models)}")
        if not self.learning_rate_min <= self.learning_rate <= self.learning_rate_max:
            raise ValueError(
                f"learning_rate ({self.learning_rate}) must lie within learning_rate_min "
                f"({self.learning_rate_min}) and learning_rate_max ({self.learning_rate_max})"
            )
        if self.learning_url.split(":", 1)[0] != "memory" and self.bus_url.split(":", 1)[0] == "memory":
            raise ValueError(
                "learning_url is shared (Redis) but bus_url is memory://: the other replicas would never "
                "hear of new model versions; set CPE_BUS_URL to the Redis URL too"
            )
        if self.cache_ttl_min_ms > self.cache_ttl_max_ms:
            raise ValueError(
                f"cache_ttl_min_ms ({self.cache_ttl_min_ms}) must be at most "
                f"cache_ttl_max_ms ({self.cache_ttl_max_ms})"
            )
        if self.queue_size < self.max_batch:
            raise ValueError(
                f"queue_size ({self.queue_size}) must be >= max_batch ({self.max_batch}), "
                "or a full-size batch request could never be admitted"
            )
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as ``CPE_*`` variables: how they reach the worker processes of ``serve``."""
        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            env[f"CPE_{name.upper()}"] = text
        return env
