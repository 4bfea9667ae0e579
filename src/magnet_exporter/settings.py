"""The exporter's settings: one pydantic-settings class, read from flags, environment and `.env`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import httpx
import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from magnet_exporter.config_file import ConfigFileSource, Organization, read_config_file
from magnet_exporter.keys import ApiKey, ApiKeyFile, KeyFile, StaticKey
from magnet_exporter.model import SESSION_LABELS, IdleListing

MIN_POLL_INTERVAL_SECONDS = 5.0
DEMO_API_KEY = SecretStr("demo")
DEMO_POLL_INTERVAL_SECONDS = 5.0

FLAGS = {
    "config_file": "--config",
    "api_url": "--api-url",
    "api_key_file": "--api-key-file",
    "organization_id": "--organization-id",
    "organization": "--organization",
    "poll_interval_seconds": "--poll-interval",
    "request_timeout_seconds": "--request-timeout",
    "max_response_bytes": "--max-response-bytes",
    "stale_after_seconds": "--stale-after",
    "listen_address": "--listen-address",
    "web_config_file": "--web.config.file",
    "session_labels": "--session-labels",
    "max_label_values": "--max-label-values",
    "idle_session_seconds": "--idle-session-seconds",
    "idle_sessions_max": "--idle-sessions-max",
    "log_level": "--log-level",
    "log_format": "--log-format",
    "max_connections": "--max-connections",
    "worker_threshold_bytes": "--worker-threshold-bytes",
    "demo": "--demo",
}
"""The command-line flag of each setting; the API key has none on purpose (flags show in `ps`)."""


KeySource = Callable[[], SecretStr]
"""Gives the API key to send, each time it is asked."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One organization to poll."""

    name: str
    """The value of the `organization` label."""
    organization_id: str | None
    key: KeySource


class Settings(BaseSettings):
    """Everything the exporter can be told: flags win over environment, environment over `.env`."""

    model_config = SettingsConfigDict(
        env_prefix="MAGNET_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    config_file: Path | None = None
    organizations: tuple[Organization, ...] = ()
    api_url: str = "https://magnet.run"
    api_key: ApiKey | None = None
    api_key_file: ApiKeyFile | None = None
    organization_id: str | None = None
    organization: str = ""
    poll_interval_seconds: float = Field(default=60.0, ge=MIN_POLL_INTERVAL_SECONDS)
    request_timeout_seconds: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    stale_after_seconds: float | None = Field(default=None, gt=0)
    listen_address: str = "0.0.0.0:9877"
    web_config_file: Path | None = None
    session_labels: Annotated[tuple[str, ...], NoDecode] = ("status", "pr_status", "model")
    # Five: every documented PR status must fit, or zero series would fold into `other`.
    max_label_values: int = Field(default=100, ge=5)
    # Sessions idle this long are listed by name; 15 minutes is the idle histogram's le="900.0".
    # At most 30 days: the idle histogram ends at a day, and Magnet's sessions are weeks at most.
    idle_session_seconds: float = Field(default=900.0, ge=0, le=30 * 86_400)
    # Per organization; each listed session is a series, so the list is bounded (0: none).
    idle_sessions_max: int = Field(default=10, ge=0, le=1000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["logfmt", "json"] = "logfmt"
    max_connections: int | None = Field(default=None, ge=1)  # 20,000; 5,000 with TLS
    # 2 MiB: see sources.WORKER_THRESHOLD_BYTES, which says why.
    worker_threshold_bytes: int = Field(default=2 * 2**20, ge=0)
    demo: bool = False

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read flags, then the environment, then `.env`, then the configuration file."""
        return (init_settings, env_settings, dotenv_settings, ConfigFileSource(settings_cls))

    @field_validator("config_file")
    @classmethod
    def _check_config_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_config_file(value, cls.model_fields)
        return value

    @field_validator("organizations")
    @classmethod
    def _unique_names(cls, value: tuple[Organization, ...]) -> tuple[Organization, ...]:
        names = [organization.name for organization in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"name {', '.join(twice)} is used more than once")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("listen_address")
    @classmethod
    def _check_listen_address(cls, value: str) -> str:
        split_listen_address(value)
        return value

    @field_validator("session_labels", mode="before")
    @classmethod
    def _split_labels(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("session_labels")
    @classmethod
    def _check_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [label for label in value if label not in SESSION_LABELS]
        if unknown:
            raise ValueError(
                f"unknown label {', '.join(unknown)}; choose from {', '.join(SESSION_LABELS)}"
            )
        if not value:
            raise ValueError("needs at least one label")
        if len(set(value)) != len(value):
            raise ValueError("names a label twice")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set MAGNET_API_KEY or MAGNET_API_KEY_FILE, not both")
        has_key = self.api_key is not None or self.api_key_file is not None
        if not has_key and not self.organizations and not self.demo:
            raise ValueError("MAGNET_API_KEY is required (or MAGNET_API_KEY_FILE, or --demo)")
        if not self.organization:
            object.__setattr__(self, "organization", self.organization_id or "default")
        if self.demo and "poll_interval_seconds" not in self.model_fields_set:
            object.__setattr__(self, "poll_interval_seconds", DEMO_POLL_INTERVAL_SECONDS)
        if self.stale_after_seconds is None:
            object.__setattr__(self, "stale_after_seconds", 3 * self.poll_interval_seconds)
        elif self.stale_after_seconds < self.poll_interval_seconds:
            raise ValueError(
                "MAGNET_STALE_AFTER_SECONDS (--stale-after) must be at least the poll interval"
            )
        return self

    def targets(self) -> list[Target]:
        """List the organizations to poll, each with its label value and the source of its key."""
        if self.organizations:
            return [
                Target(o.name, o.organization_id, _key_source(o.api_key, o.api_key_file))
                for o in self.organizations
            ]
        key = _key_source(
            self.api_key or (None if self.api_key_file else DEMO_API_KEY), self.api_key_file
        )
        return [Target(self.organization, self.organization_id, key)]

    @property
    def stale_after(self) -> float:
        """Seconds after which the last good data is no longer served."""
        assert self.stale_after_seconds is not None  # filled in by the validator  # noqa: S101
        return self.stale_after_seconds

    @property
    def idle_listing(self) -> IdleListing:
        """Which idle sessions each snapshot lists by name."""
        return IdleListing(self.idle_session_seconds, self.idle_sessions_max)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        """The listen address, split."""
        return split_listen_address(self.listen_address)


def _key_source(key: SecretStr | None, key_file: Path | None) -> KeySource:
    if key_file is not None:
        return KeyFile(key_file)
    assert key is not None  # the validators saw to it  # noqa: S101
    return StaticKey(key)


def split_listen_address(address: str) -> tuple[str, int]:
    """Split `host:port` or `[v6-host]:port`; raise ValueError when it cannot be."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("must be HOST:PORT with a port from 0 to 65535, e.g. 0.0.0.0:9877")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)


def describe_errors(error: pydantic.ValidationError) -> list[str]:
    """One line per problem, each naming the environment variable and flag of the setting."""
    lines = []
    for problem in error.errors(include_url=False, include_input=False):
        message = problem["msg"].removeprefix("Value error, ")
        location = problem["loc"]
        if location and location[0] == "organizations":
            path = "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in location
            )
            lines.append(f"{path.lstrip('.')} in the configuration file: {message}")
        elif location:
            field = str(location[0])
            flag = FLAGS.get(field)
            name = f"MAGNET_{field.upper()}" + (f" ({flag})" if flag else "")
            lines.append(f"{name}: {message}")
        else:
            lines.append(message)
    return lines
