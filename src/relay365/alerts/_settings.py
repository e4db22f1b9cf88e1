"""The alert settings live with the rest of the configuration (relay365.config)."""

from ..config import AlertSettings, alert_settings_from

__all__ = ["AlertSettings", "alert_settings_from"]
