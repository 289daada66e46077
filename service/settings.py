"""Service settings from the environment (prefix ``LEVI_``; ``REDIS_URL`` is also read as is)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

# Tokens that appear in tutorials and default configs; refusing them catches copy-paste setups.
_WELL_KNOWN_TOKENS = {"changeme", "changethis", "secret", "password", "admin", "token", "test"}
MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Everything the service and the batch scorer can be configured with.

    Every field reads ``LEVI_<FIELD>`` (e.g. ``LEVI_MODEL_DIR``, ``LEVI_MAX_BATCH``); the Redis
    URL also reads the conventional unprefixed ``REDIS_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="LEVI_", extra="ignore")

    model_dir: Path = Field(
        Path("artifacts/latest"), description="artifact version directory (or the latest link)"
    )
    challenger_dir: Path | None = Field(
        None,
        description="artifact served as challenger from the start (PUT /admin/challenger "
        "changes it at run time); unset = none",
    )
    canary: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of users (0-1, sticky by a hash of the user id, the same on every "
        "replica) answered by the challenger",
    )
    shadow: bool = Field(
        False,
        description="the challenger also scores what the champion answers (and the champion "
        "the challenger's canary answers), off the request path, for the paired comparison",
    )
    shadow_queue_bound: int = Field(
        4096, ge=1, description="pairs waiting for shadow scoring; beyond, shadow work is dropped"
    )
    shadow_timeout_s: float = Field(
        5.0, gt=0, description="shadow work not started within this many seconds is dropped"
    )
    load_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="nice value of the thread that loads and compiles a new version while "
        "another serves (Linux), so that serving keeps the CPU",
    )
    online_eval: bool = Field(
        True,
        description="keep each version's predictions (LEVI_PREDICTION_TTL_S) and join them "
        "with POST /feedback: online RMSE / MAE per version in GET /v1/models and metrics",
    )
    prediction_ttl_s: int = Field(
        2 * 24 * 3600,
        gt=0,
        description="how long a prediction can be joined with the feedback on its pair",
    )
    prediction_log_size: int = Field(
        100_000,
        ge=1,
        description="(user, item) pairs whose predictions a process keeps (about 170 bytes "
        "each: 16 MiB when full; Redis keeps them for every replica)",
    )
    prediction_queue: int = Field(
        50_000,
        ge=1,
        description="predictions waiting to be written for the online evaluation; beyond, "
        "dropped and counted (levi_prediction_log_total)",
    )
    online_key_prefix: str = Field(
        "levi:online",
        min_length=1,
        max_length=64,
        description="Redis key prefix of logged predictions and online-evaluation sums",
    )
    online_eval_ttl_s: int = Field(
        30 * 24 * 3600,
        gt=0,
        description="Redis keeps a version's online-evaluation sums this long after their "
        "last update",
    )
    gate: bool = Field(
        False,
        description="decide a rollout automatically: promote the challenger when it errs "
        "less than the champion with LEVI_GATE_CONFIDENCE over at least LEVI_GATE_MIN_EVENTS "
        "joined feedback events, remove it when it errs more",
    )
    gate_min_events: int = Field(500, ge=1, description="joined events before the gate decides")
    gate_confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="confidence of the gate's interval"
    )
    gate_rating: Literal["model", "served"] = Field(
        "model",
        description="what the comparison judges: model (each version's own rating; fair to a "
        "new challenger, whose online corrections start from zero) or served (with them)",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("LEVI_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis for the shared activation cache; unset = in-process cache only",
    )
    cache_ttl_s: int = Field(7 * 24 * 3600, gt=0, description="TTL of activations in Redis")
    local_cache_size: int = Field(
        8_192,
        ge=0,
        description="entries of the in-process activation LRU (n_layers x d float32 each: 9 KiB "
        "for MiniLM, so 72 MiB when full; it only serves re-projecting an entity, Redis is the "
        "shared tier)",
    )
    cache_key_prefix: str = Field(
        "levi:act", min_length=1, max_length=64, description="Redis key prefix of activations"
    )
    redis_timeout_s: float = Field(
        0.1, gt=0, le=5, description="socket timeout of every Redis call (connect, read, write)"
    )
    redis_backoff_s: float = Field(
        0.5, gt=0, description="first pause of Redis use after an error; doubles up to the max"
    )
    redis_backoff_max_s: float = Field(15.0, gt=0)
    max_batch: int = Field(32, ge=1, le=1024, description="most requests scored in one call")
    max_delay_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="longest wait for more requests before scoring a batch; taken only when "
        "the recent arrival rate expects another request within it (so a lone client whose "
        "round trip exceeds it never waits)",
    )
    queue_bound: int = Field(
        16_384, ge=1, description="pending pairs beyond which requests get 503"
    )
    request_timeout_s: float = Field(10.0, gt=0, description="per-request deadline (504 after)")
    step_tokens: int = Field(
        96,
        ge=1,
        description="tokens of new text a large request encodes per scheduling step (at least "
        "one entity): a small request waits behind at most one such step, about 10-20 ms with "
        "MiniLM on 2 cores (service/batcher.py; measured in docs/BENCHMARKS.md)",
    )
    slice_pairs: int = Field(
        1024,
        ge=1,
        description="pairs of a large request scored per scheduling step once its entities "
        "are projected",
    )
    max_cold_tokens: int = Field(
        16_000,
        ge=1,
        description="most tokens of new text (entities not cached: request fields, unknown "
        "ids; 16 per entity plus one per 3 characters of its fields) one request may bring; "
        "beyond: 413. 16,000 is about 750 new MovieLens titles, encoded in about 4.5 s while "
        "small requests saturate the scorer (2 cores, MiniLM): two such at once stay within "
        "the 10 s deadline",
    )
    queue_tokens: int = Field(
        32_000,
        ge=1,
        description="most tokens of new text pending over all queued requests (two maximal "
        "ones); beyond: 503 with Retry-After, instead of admitting work that would time out",
    )
    max_batch_request: int = Field(1000, ge=1, description="most entries in one batch request")
    max_rank_candidates: int = Field(
        10_000, ge=1, description="most candidates in one POST /rank (beyond: 413)"
    )
    projection_cache_size: int = Field(
        20_000,
        ge=1,
        description="entities per side (users, items) whose first-layer head projections are "
        "kept in process (8.3 KiB each for the default model: 166 MiB per side when full; "
        "pages are touched only as entities are seen)",
    )
    corrections: bool = Field(
        True,
        description="add online corrections learned from POST /feedback to answers (shrunk "
        "per-user and per-item offsets of the served model version); 0 / false: answers are "
        "the model's alone (feedback is still logged)",
    )
    feedback_dir: Path | None = Field(
        Path("feedback"),
        description="where POST /feedback appends its log (one JSON-lines file per process, "
        "read by `python -m training --feedback DIR`); empty = POST /feedback disabled (503)",
    )
    max_feedback_events: int = Field(1000, ge=1, description="most events in one POST /feedback")
    feedback_rotate_bytes: int = Field(
        64 << 20, ge=1024, description="a new feedback log file after this many bytes"
    )
    feedback_rotate_s: float = Field(
        3600.0, gt=0, description="a new feedback log file after this many seconds"
    )
    corrections_ttl_s: int = Field(
        30 * 24 * 3600,
        gt=0,
        description="Redis keeps a model version's corrections this long after their last feedback",
    )
    corrections_mirror_size: int = Field(
        200_000,
        ge=1,
        description="with Redis: users / items per side whose corrections a process mirrors "
        "(answers during a Redis outage come from it)",
    )
    feedback_dedup_s: int = Field(
        3600,
        gt=0,
        description="a client-supplied event_id is remembered this long: a retried POST "
        "/feedback is logged again but not learned twice",
    )
    corrections_key_prefix: str = Field(
        "levi:fb", min_length=1, max_length=64, description="Redis key prefix of corrections"
    )
    corrections_backlog: int = Field(
        100_000,
        ge=1,
        description="feedback events whose corrections are kept for Redis while it is down "
        "(replayed when it answers; beyond, the oldest are dropped from Redis's state only)",
    )
    catalog_dir: Path | None = Field(
        Path("catalog"),
        description="where the catalog (PUT /v1/items/{id}, /v1/users/{id}) appends its log "
        "(one JSON-lines file per process, synced before each answer; read at start to "
        "refill Redis, and by `python -m training --catalog DIR`); empty = catalog disabled "
        "(its routes answer 503, scoring reads no catalog)",
    )
    catalog_key_prefix: str = Field(
        "levi:cat",
        min_length=1,
        max_length=64,
        description="Redis key prefix of the catalog (keys per data set and id, not per model "
        "version)",
    )
    catalog_sync_s: float = Field(
        0.1,
        gt=0,
        le=10,
        description="seconds between two reads of the catalog writes of other processes "
        "(Redis's change stream, or the shared log directory without Redis): an update is "
        "answered by every replica and worker within about this plus one read (1 s tested)",
    )
    catalog_rotate_bytes: int = Field(
        64 << 20, ge=1024, description="a new catalog log file after this many bytes"
    )
    catalog_rotate_s: float = Field(
        3600.0, gt=0, description="a new catalog log file after this many seconds"
    )
    max_catalog_bulk: int = Field(
        1000, ge=1, description="most records in one POST /v1/items or POST /v1/users"
    )
    catalog_warm_queue: int = Field(
        100_000,
        ge=1,
        description="registered entities waiting for their text to be encoded and projected "
        "off the request path; beyond, they are computed on first use "
        '(levi_catalog_encodes_total{result="dropped"})',
    )
    catalog_warm_tokens: int = Field(
        96,
        ge=1,
        description="tokens of text the catalog's background projection encodes per step "
        "(at least one entity); a step starts only while no request waits, and a request "
        "arriving meanwhile waits for it to end: as LEVI_STEP_TOKENS, one step of a large "
        "request (larger steps encode no faster: measured about 10 ms per MiniLM title "
        "whatever the step, 2 busy cores)",
    )
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="largest request body")
    receive_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="`python -m service`: a request must arrive whole (request line, headers "
        "and body) within this many seconds, a connection's first one from the moment it "
        "opened, later ones from their first byte; beyond: 408 (a partial request) or closed "
        "(nothing sent). Trickled bytes do not extend it (service/connections.py)",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="`python -m service`: connections one process serves at once (each worker "
        "of --workers N); one opened beyond gets 503 with Retry-After once its request "
        "arrived, or is closed after 1 s without one; /healthz, /readyz and /metrics are "
        "answered anyway",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token of /admin/*; unset = admin endpoints disabled (403)"
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's own OpenTelemetry request spans, metrics and logs (they reach an "
        "exporter only where one is configured, e.g. FASTAPI_OTEL_AUTO_CONFIGURE=true with the "
        "OTEL_* variables); off by default: the service exports Prometheus metrics, and the "
        "per-request check costs about a tenth of a single prediction's time",
    )
    compilation_cache: bool = Field(
        True,
        description="keep compiled XLA executables on disk (JAX persistent compilation cache), "
        "so a restart or a new replica loads them instead of compiling; 0 / false turns it off",
    )
    compilation_cache_dir: Path | None = Field(
        None,
        description="where the compilation cache lives; unset = <LEVI_CACHE_DIR or the user "
        "cache dir>/xla (e.g. ~/.cache/levi-serve/xla)",
    )
    warmup: Literal["first", "all"] = Field(
        "first",
        description="first: ready once the shapes first traffic needs are compiled, the rest "
        "compile in the background (levi_warmup_pending_shapes); all: ready after every shape",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(
        1,
        ge=1,
        description="uvicorn worker processes of `python -m service`; >1 shares metrics and "
        "readiness through a per-start directory (deploy/README.md: workers vs replicas)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="level of the service's and uvicorn's loggers"
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text (uvicorn's style) or json: one object per line with time, level, "
        "logger, message, model_version and request_id, for log shippers",
    )

    @field_validator("compilation_cache_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # LEVI_COMPILATION_CACHE_DIR= (set, empty) means the default place, as for the
        # trainer (model/compilation_cache.py), not the working directory.
        return None if value == "" else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def compilation_cache_path(self) -> Path | None:
        """The compilation cache directory in use, or None when the cache is off."""
        if not self.compilation_cache:
            return None
        if self.compilation_cache_dir is not None:
            return self.compilation_cache_dir
        from model.compilation_cache import default_directory

        return default_directory()

    @field_validator("admin_token")
    @classmethod
    def _refuse_weak_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if token == "":
            return None
        if len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"LEVI_ADMIN_TOKEN has {len(token)} characters; use at least "
                f"{MIN_ADMIN_TOKEN_LENGTH}, e.g. `python -c 'import secrets; "
                f"print(secrets.token_urlsafe(32))'`"
            )
        if token.lower() in _WELL_KNOWN_TOKENS or len(set(token)) < 6 or not token.isprintable():
            raise ValueError(
                "LEVI_ADMIN_TOKEN is a well-known or low-entropy value; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    @field_validator("feedback_dir", "catalog_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip() == "" else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"REDIS_URL {value!r} must start with redis://, rediss:// or unix:// "
                "(e.g. redis://127.0.0.1:6379/0)"
            )
        return value

    @model_validator(mode="after")
    def _check_backoff(self) -> Settings:
        if self.redis_backoff_max_s < self.redis_backoff_s:
            raise ValueError(
                f"LEVI_REDIS_BACKOFF_MAX_S ({self.redis_backoff_max_s}) is below "
                f"LEVI_REDIS_BACKOFF_S ({self.redis_backoff_s})"
            )
        return self


def describe_settings_error(error: ValidationError) -> str:
    """One line per bad setting, naming its variable; values are left out (they may be secret)."""
    lines = []
    for e in error.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in e["loc"]) or "settings"
        name = "REDIS_URL" if field == "redis_url" else f"LEVI_{field.upper()}"
        lines.append(f"  {name}: {e['msg']}")
    return "invalid settings:\n" + "\n".join(lines)
