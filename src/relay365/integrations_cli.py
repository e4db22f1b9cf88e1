"""Commands of the integrations part; registered on relay365.cli.app when cli is imported."""

from __future__ import annotations
