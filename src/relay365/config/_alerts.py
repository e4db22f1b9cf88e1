"""What ``[alerts]`` in relay365.toml may say: channels, thresholds, schedules."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class AlertSettings(BaseModel):
    """Where alerts go and when they are sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str] = Field(
        default_factory=list,
        description="Apprise URLs: Slack, Teams, Discord, Telegram, ntfy, a JSON webhook, mailto...",
        examples=[["ntfy://relay365-alerts", "json://alerts.example.com/hook"]])
    email_to: list[str] = Field(
        default_factory=list, description="Admins mailed through relay365 itself (queued in the outbox).",
        examples=[["it@contoso.com"]])
    email_from: str | None = Field(
        None, description="Sender of alert email; default: the first sender of a connection that may carry "
                          "it. An alert about a connection is never sent through that connection.",
        examples=["alerts@contoso.com"])
    email_connections: list[str] = Field(
        default_factory=list, description="Connections that may carry alert email (default: any).")
    failure_delay: float = Field(60, ge=0, description="Seconds failures are collected before the "
                                                       "first alert about them (grouping).")
    failure_interval: float = Field(900, ge=0, description="At most one delivery-failure alert per this "
                                                           "many seconds (rate limit).")
    sign_in_repeat: float = Field(86400, gt=0, description="Repeat a needs-sign-in alert this often while "
                                                           "it lasts (seconds).")
    backlog_threshold: int = Field(100, ge=0, description="Alert when more messages wait than this "
                                                          "(0: never).")
    expiry_days: list[int] = Field(default_factory=lambda: [60, 30, 14, 7, 1, 0],
                                   description="Days before a secret or certificate expires to warn.")
    summary: Literal["off", "daily", "weekly"] = Field("daily", description="Sent/failed summary.")
    summary_hour: int = Field(8, ge=0, le=23,
                              description="UTC hour the summary is sent at (weekly: on Mondays).")
    keep_alive: bool = Field(True, description="Refresh each delegated sign-in daily, so an idle relay's "
                                               "refresh token never expires from inactivity.")
    keep_alive_interval: float = Field(86400, gt=0, description="Seconds between keep-alive refreshes.")
    check_interval: float = Field(30, gt=0, description="Seconds between looks at the outbox and the "
                                                        "connections' state.")
    expiry_interval: float = Field(6 * 3600, gt=0, description="Seconds between looks at credential expiry.")

    @field_validator("email_to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            if not _ADDRESS.match(address):
                raise ValueError(f"{address!r} is not an email address")
        return v

    @field_validator("expiry_days")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError("expiry_days are days before the end date: 0 or more")
        return sorted(set(v), reverse=True)


def alert_settings_from(data: dict[str, Any] | None) -> AlertSettings:
    """``AlertSettings`` from the ``[alerts]`` table of a configuration (missing: the defaults)."""
    try:
        return AlertSettings.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"alerts.{where}: {first['msg']}") from exc
