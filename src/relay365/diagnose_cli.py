"""Commands of the diagnose part; registered on relay365.cli.app when cli is imported."""

from __future__ import annotations
