"""Diagnose: the catalogue of failures, each with its cause and fix in plain words.

The catalogue is data (``catalogue.toml``), keyed by what Microsoft answers: AADSTS
numbers, Graph error codes, SMTP replies, and relay365's own conditions.
"""

from ._catalogue import Entry, catalogue, find_entry, lookup_entry

__all__ = ["Entry", "catalogue", "find_entry", "lookup_entry"]
