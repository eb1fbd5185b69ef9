"""Facade configuration: `FacadeSettings`, read from `TANDEM_*` environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tandem.tracing import otlp_traces_url  # stdlib only


class FacadeSettings(BaseSettings):
    """Everything the facade process needs; immutable once built."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore", frozen=True)

    # gRPC target of the core(s): "host:port", or "dns:///service:port" to balance per RPC
    # over every address a headless Kubernetes Service resolves to.
    core_address: str = "127.0.0.1:50051"
    # gRPC deadline of one request to the core, end to end (streaming included).
    request_timeout_s: float = Field(default=600.0, gt=0)
    # Deadline of the readiness probe's health check against the core.
    health_timeout_s: float = Field(default=2.0, gt=0)
    # Deadline of GET /health/generate's one-token Generate call.
    health_generate_timeout_s: float = Field(default=30.0, gt=0)
    # Largest accepted HTTP request body; larger bodies get 413.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    # Largest gRPC message the facade sends to or accepts from the core.
    max_grpc_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # Accepted bearer API keys; empty means no authentication. Env: JSON list or "k1,k2".
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A file of further accepted keys: one per line, blank lines and `#` comments ignored.
    api_keys_file: Path | None = None
    # Whether GET /metrics needs an API key too (it is open by default, like the health probes).
    metrics_require_auth: bool = False
    # Origins browsers may call the API from (CORS); empty turns CORS off. JSON list or "a,b".
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Log lines as one JSON object each ("json") or as plain text ("text").
    log_format: Literal["json", "text"] = "json"
    # Level of the facade process's logs (the same TANDEM_LOG_LEVEL `tandem` reads).
    log_level: str = "INFO"
    # Model sent to the core when a request names none; None lets the core pick its default.
    default_model: str | None = None
    # Seconds in-flight HTTP requests (streams included) get to finish after SIGTERM; keep it
    # below the pod's terminationGracePeriodSeconds.
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # Where /v1/responses keeps stored responses: unset = this process's memory (an LRU);
    # "redis://host:6379/0" = a Redis every facade replica shares.
    responses_store_url: str | None = None
    # How long a stored response stays readable (and continuable), in seconds.
    responses_store_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    # Largest stored entry (response + its conversation); larger ones are not stored.
    responses_store_max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Memory store bounds: entries and total bytes (least recently used go first).
    responses_store_max_entries: int = Field(default=10_000, ge=1)
    responses_store_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # Redis store: connect/read timeout of one command; a store that does not answer in time
    # is a 503.
    responses_store_timeout_s: float = Field(default=2.0, gt=0)

    # OTLP/HTTP (protobuf) receiver of the facade's OpenTelemetry spans, e.g.
    # "http://collector:4318" (/v1/traces added when the URL has no path); None: no tracing.
    otlp_traces_endpoint: str | None = None

    def accepted_api_keys(self) -> tuple[str, ...]:
        """`api_keys` plus the keys of `api_keys_file` (read now; a missing file raises)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            file_keys = read_api_keys_file(self.api_keys_file)
            if not file_keys:
                raise ValueError(f"API key file {self.api_keys_file} holds no keys")
            keys += file_keys
        return tuple(dict.fromkeys(keys))

    @field_validator("otlp_traces_endpoint")
    @classmethod
    def _check_otlp_url(cls, value: str | None) -> str | None:
        """An http(s) URL (tandem/tracing.py's rule), or unset; "" counts as unset."""
        if not value:
            return None
        otlp_traces_url(value)  # raises ValueError naming the value
        return value

    @field_validator("api_keys", "cors_allow_origins", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string from the environment."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [key.strip() for key in text.split(",") if key.strip()]
        return value


def read_api_keys_file(path: Path) -> list[str]:
    """The keys of a key file: one per line; blank lines and lines starting with `#` skipped."""
    keys = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            keys.append(key)
    return keys
