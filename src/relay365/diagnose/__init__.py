"""Diagnose: the catalogue of failures, each with its cause and fix in plain words, and the
doctor that checks a connection end to end.

The catalogue is data (``catalogue.toml``), keyed by what Microsoft answers: AADSTS
numbers, Graph error codes, SMTP replies, and relay365's own conditions.  The doctor
(``run_doctor``) and the credential expiries (``credential_expiries``) load lazily: auth,
transport and store import this package for the catalogue, and the doctor imports them.
"""

import typing as _typing

from .._lazy import lazy_attributes as _lazy_attributes
from ._catalogue import Entry, Match, catalogue, find_entry, lookup_entry, match_entry

if _typing.TYPE_CHECKING:
    from ._doctor import Check, DoctorReport, config_failure, run_doctor
    from ._expiry import WARN_DAYS, CredentialExpiry, credential_expiries, graph_http, local_expiries

_LAZY = {"Check": "_doctor", "DoctorReport": "_doctor", "config_failure": "_doctor",
         "run_doctor": "_doctor", "WARN_DAYS": "_expiry", "CredentialExpiry": "_expiry",
         "credential_expiries": "_expiry", "graph_http": "_expiry", "local_expiries": "_expiry"}


__getattr__ = _lazy_attributes(__name__, {name: f".{module}" for name, module in _LAZY.items()})


__all__ = ["WARN_DAYS", "Check", "CredentialExpiry", "DoctorReport", "Entry", "Match", "catalogue",
           "config_failure", "credential_expiries", "find_entry", "graph_http", "local_expiries",
           "lookup_entry", "match_entry", "run_doctor"]
