"""The failure catalogue: every failure a user can meet, with its cause and its fix.

The catalogue is data (``catalogue.toml``), keyed by what Microsoft answers: AADSTS
numbers, Graph error codes, SMTP replies, and relay365's own conditions.  Every
``Relay365Error`` carries one of its entries, so this package is a leaf: it imports
nothing from relay365.
"""

from ._catalogue import Entry, Match, catalogue, find_entry, lookup_entry, match_entry

__all__ = ["Entry", "Match", "catalogue", "find_entry", "lookup_entry", "match_entry"]
