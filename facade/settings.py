"""Facade configuration: `FacadeSettings`, read from `TANDEM_*` environment variables."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    # Largest accepted HTTP request body; larger bodies get 413.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    # Largest gRPC message the facade sends to or accepts from the core.
    max_grpc_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # Accepted bearer API keys; empty means no authentication. Env: JSON list or "k1,k2".
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Model sent to the core when a request names none; None lets the core pick its default.
    default_model: str | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string from the environment."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [key.strip() for key in text.split(",") if key.strip()]
        return value
