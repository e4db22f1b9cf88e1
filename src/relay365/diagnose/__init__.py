"""Diagnose: the doctor that checks a connection end to end, and the expiry of each
connection's secret or certificate.

The failures it names come from the catalogue (``relay365.catalogue``), which sits below
every part; this package sits above auth, transport and store, whose probes it runs.
"""

from ._doctor import Check, DoctorReport, config_failure, run_doctor
from ._expiry import WARN_DAYS, CredentialExpiry, credential_expiries, local_expiries

__all__ = ["WARN_DAYS", "Check", "CredentialExpiry", "DoctorReport", "config_failure",
           "credential_expiries", "local_expiries", "run_doctor"]
