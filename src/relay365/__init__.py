"""relay365: send every application's email through Microsoft 365 with OAuth 2.0."""

__version__ = "0.1.0"

__all__ = ["__version__"]
