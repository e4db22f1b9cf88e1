"""Configuration: one TOML file (``relay365.toml``), every key overridable by ``RELAY365_*``."""

from ._alerts import AlertSettings, alert_settings_from
from ._env import connection_env_variable, env_variable
from ._load import config_path, load_settings, settings_from_dict, update_config_file, write_settings
from ._model import (
    DEFAULT_AUTHORITY_HOST,
    DEFAULT_GRAPH_URL,
    AdminSettings,
    ApiKey,
    ClientUser,
    ConnectionSettings,
    DeliverySettings,
    RelaySettings,
    Settings,
    SmtpListener,
)

__all__ = [
    "DEFAULT_AUTHORITY_HOST",
    "DEFAULT_GRAPH_URL",
    "AdminSettings",
    "AlertSettings",
    "ApiKey",
    "ClientUser",
    "ConnectionSettings",
    "DeliverySettings",
    "RelaySettings",
    "Settings",
    "SmtpListener",
    "alert_settings_from",
    "config_path",
    "connection_env_variable",
    "env_variable",
    "load_settings",
    "settings_from_dict",
    "update_config_file",
    "write_settings",
]
