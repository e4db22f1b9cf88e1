"""Alerts: delivery failures, connections that need sign-in, expiring secrets and
certificates, a growing backlog and a daily or weekly summary, sent through Apprise URLs
(Slack, Teams, Discord, Telegram, ntfy, webhooks, mailto...) and email through relay365.

``relay365 serve`` runs an ``AlertService`` beside delivery; it also keeps delegated
sign-ins alive with a daily silent refresh.  Only the settings model loads eagerly:
the configuration needs it, and Apprise (with its hundred plugins) loads with the rest.
"""

import typing as _typing

from .._lazy import lazy_attributes as _lazy_attributes
from ._settings import AlertSettings, alert_settings_from

if _typing.TYPE_CHECKING:
    from ._alerter import Alerter, Failure, failure_alert
    from ._channels import Alert, AppriseChannel, Channel, EmailChannel
    from ._keepalive import keep_alive
    from ._service import AlertService, build_channels, make_test_alert

_LAZY = {"Alerter": "_alerter", "Failure": "_alerter", "failure_alert": "_alerter",
         "Alert": "_channels", "AppriseChannel": "_channels", "Channel": "_channels",
         "EmailChannel": "_channels", "keep_alive": "_keepalive", "AlertService": "_service",
         "build_channels": "_service", "make_test_alert": "_service"}


__getattr__ = _lazy_attributes(__name__, {name: f".{module}" for name, module in _LAZY.items()})


__all__ = [
    "Alert",
    "AlertService",
    "AlertSettings",
    "Alerter",
    "AppriseChannel",
    "Channel",
    "EmailChannel",
    "Failure",
    "alert_settings_from",
    "build_channels",
    "failure_alert",
    "keep_alive",
    "make_test_alert",
]
