"""The failure catalogue and `relay365 explain`: every error a user can meet finds its entry."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import m365sim
from relay365.catalogue import catalogue, find_entry, match_entry
from relay365.cli import app

# Entries of what Microsoft answers carry a link to Microsoft's documentation.
MICROSOFT = ("AAD-", "M365-", "SMTP-")

# The seed's troubleshooting table, first column, as the seed writes it.
SEED_ROWS = [
    ("535 5.7.139 Authentication unsuccessful, user is locked by your organization's security "
     "defaults policy", "SMTP-SECURITY-DEFAULTS"),
    ("AADSTS50194 — empty access token box", "AAD-SINGLE-TENANT-COMMON"),
    ("Need admin approval screen", "AAD-NEEDS-ADMIN-APPROVAL"),
    ("Not Found on test email", "M365-NO-MAILBOX"),
    ("Forbidden on test email", "M365-FORBIDDEN"),
]

# Every error of shared/m365-reference.md: identity platform (§1-§3), Graph sendMail
# (§4.3-§4.5, §7.2) and Exchange Online SMTP (§5.4, §6.1), as Microsoft words them.
REFERENCE = [
    # §1 authorize
    ("AADSTS50194: Application 'x'(Relay) is not configured as a multi-tenant application.",
     "AAD-SINGLE-TENANT-COMMON"),
    ("AADSTS90002: Tenant 'nope' not found.", "AAD-TENANT-NOT-FOUND"),
    ("AADSTS9001023: The grant type isn't supported over the /common or /consumers endpoints.",
     "AAD-APP-ONLY-COMMON"),
    ("AADSTS50059: No tenant-identifying information found in either the request or implied by any "
     "provided credentials.", "AAD-APP-ONLY-COMMON"),
    ("AADSTS50011: The redirect URI 'http://x' specified in the request does not match",
     "AAD-REDIRECT-MISMATCH"),
    ("AADSTS700016: Application with identifier 'x' was not found in the directory 'contoso'.",
     "AAD-UNKNOWN-APP"),
    ("AADSTS90094", "AAD-NEEDS-ADMIN-APPROVAL"),
    ("AADSTS90095", "AAD-NEEDS-ADMIN-APPROVAL"),
    ("AADSTS65004: User declined to consent to access the app.", "AAD-CONSENT-DECLINED"),
    ("AADSTS65001: The user or administrator has not consented to use the application with ID 'x'.",
     "AAD-CONSENT-MISSING"),
    ("AADSTS50058: A silent sign-in request was sent but no user is signed in.", "AAD-LOGIN-REQUIRED"),
    ("AADSTS50049: Unknown or invalid instance.", "AAD-INVALID-INSTANCE"),
    # §2 token
    ("AADSTS7000215: Invalid client secret provided.", "AAD-SECRET-INVALID"),
    ("AADSTS7000222: The provided client secret keys for app 'x' are expired.", "AAD-SECRET-EXPIRED"),
    ("AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or "
     "'client_secret'.", "AAD-NO-CREDENTIAL"),
    ("AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be "
     "presented.", "AAD-PUBLIC-CLIENT-SECRET"),
    ("AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.",
     "AAD-REFRESH-INACTIVE"),
    ("AADSTS700082: The refresh token has expired due to inactivity.", "AAD-REFRESH-INACTIVE"),
    ("AADSTS50173: The provided grant has expired due to it being revoked.", "AAD-REFRESH-REVOKED"),
    ("AADSTS70000: The provided value for the 'code' parameter is not valid.", "AAD-BAD-CODE"),
    ("AADSTS54005: OAuth2 Authorization code was already redeemed", "AAD-BAD-CODE"),
    ("AADSTS501481: The Code_Verifier does not match the code_challenge", "AAD-BAD-CODE"),
    ("AADSTS50148", "AAD-BAD-CODE"),
    ("AADSTS70011: The provided value for the input parameter 'scope' isn't valid.", "AAD-BAD-SCOPE"),
    ("AADSTS1002012: The provided value for scope x is not valid.", "AAD-BAD-SCOPE"),
    ("AADSTS700022", "AAD-BAD-SCOPE"),
    ("AADSTS700023", "AAD-BAD-SCOPE"),
    ("AADSTS50076: you must use multi-factor authentication to access 'x'.", "AAD-MFA-REQUIRED"),
    ("AADSTS50079: you must enroll in multi-factor authentication to access 'x'.", "AAD-MFA-REQUIRED"),
    ("AADSTS53003: Access has been blocked by Conditional Access policies.", "AAD-CONDITIONAL-ACCESS"),
    ("AADSTS9002313: Invalid request. Request is malformed or invalid.", "AAD-MALFORMED-REQUEST"),
    ("AADSTS900144: The request body must contain the following parameter: 'code'.",
     "AAD-MALFORMED-REQUEST"),
    ("AADSTS50126: Error validating credentials due to invalid username or password.",
     "AAD-BAD-PASSWORD"),
    # §3 device code
    ("AADSTS70016: OAuth 2.0 device flow error. Authorization is pending.", "AAD-DEVICE-CODE-PENDING"),
    ("authorization_declined", "AAD-DEVICE-CODE-DECLINED"),
    ("bad_verification_code", "AAD-DEVICE-CODE-EXPIRED"),
    ("expired_token", "AAD-DEVICE-CODE-EXPIRED"),
    ("AADSTS70019: Verification code expired.", "AAD-DEVICE-CODE-EXPIRED"),
    ("AADSTS70020", "AAD-DEVICE-CODE-EXPIRED"),
    ("AADSTS70018", "AAD-DEVICE-CODE-EXPIRED"),
    ("AADSTS90120", "AAD-DEVICE-CODE-EXPIRED"),
    # §4.5 Graph sendMail
    ("InvalidAuthenticationToken: Access token has expired or is not yet valid.", "M365-TOKEN-INVALID"),
    ("InvalidAuthenticationToken: Access token is empty.", "M365-TOKEN-INVALID"),
    ("ErrorAccessDenied: Access is denied. Check credentials and try again.", "M365-NO-MAIL-SEND"),
    ("ErrorAccessDenied: Access to OData is disabled.", "M365-ACCESS-POLICY"),
    ("ExtensionError: Operation: Create; Exception: [Status Code: Forbidden; Reason: Access to OData "
     "is disabled.]", "M365-ACCESS-POLICY"),
    ("ErrorSendAsDenied: The user account which was used to submit this request does not have the "
     "right to send mail on behalf of the specified sending account., Cannot submit message.",
     "M365-SEND-AS-DENIED"),
    ("ErrorInvalidUser: The requested user 'x' is invalid.", "M365-UNKNOWN-USER"),
    ("ResourceNotFound: Resource could not be discovered.", "M365-UNKNOWN-USER"),
    ("Request_ResourceNotFound: Resource 'x' does not exist", "M365-UNKNOWN-USER"),
    ("MailboxNotEnabledForRESTAPI: The mailbox is either inactive, soft-deleted, or is hosted "
     "on-premise.", "M365-NO-MAILBOX"),
    ("MailboxNotEnabledForRESTAPI: REST API is not yet supported for this mailbox.", "M365-NO-MAILBOX"),
    ("ErrorInvalidRecipients: At least one recipient isn't valid.", "M365-INVALID-RECIPIENT"),
    ("ErrorMessageSizeExceeded: The message exceeds the maximum supported size.", "M365-TOO-LARGE"),
    ("ErrorMimeContentInvalidBase64String: Invalid base64 string for MIME content.",
     "M365-MIME-INVALID"),
    ("InvalidInternetMessageHeader: The internet message header name 'List-Unsubscribe' should start "
     "with 'x-' or 'X-'.", "M365-INVALID-HEADER"),
    ("InvalidInternetMessageHeaderCollection: Maximum number of headers in one message should be less "
     "than or equal to 5.", "M365-INVALID-HEADER"),
    ("RequestBodyRead: Empty Payload. JSON content expected.", "M365-BAD-REQUEST"),
    ("BadRequest: Invalid JSON. A token was not recognized in the JSON content.", "M365-BAD-REQUEST"),
    ("BadRequest: The maximum request length supported is 4MB.", "M365-TOO-LARGE"),
    ("RequestBodyTooLarge", "M365-TOO-LARGE"),
    ("ApplicationThrottled: Application is over its MailboxConcurrency limit.", "M365-THROTTLED"),
    ("TooManyRequests: Please retry again later.", "M365-THROTTLED"),
    ("ServiceUnavailable: The server is busy. Please try again later.", "R365-TRANSIENT"),
    ("ErrorServerBusy", "R365-TRANSIENT"),
    ("UnknownError", "R365-TRANSIENT"),
    ("BadRequest: /me request is only valid with delegated authentication flow.", "M365-ME-APP-ONLY"),
    ("ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "M365-UPLOAD-SESSION"),
    ("Authorization_RequestDenied: Insufficient privileges to complete the operation.",
     "M365-INSUFFICIENT-PRIVILEGES"),
    # §5.4 and §6.1 SMTP
    ("535 5.7.3 Authentication unsuccessful [SN2PR00CA0018.namprd00.prod.outlook.com]",
     "SMTP-AUTH-FAILED"),
    ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
     "Visit https://aka.ms/smtp_auth_disabled for more information.", "SMTP-AUTH-DISABLED"),
    ("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.",
     "SMTP-AUTH-DISABLED"),
    ("535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults "
     "policy. Contact your administrator. [host]", "SMTP-SECURITY-DEFAULTS"),
    ("535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be "
     "authenticated successfully. Contact your administrator.", "SMTP-CONDITIONAL-ACCESS"),
    ("535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [host]",
     "SMTP-BASIC-RETIRED"),
    ("535 5.7.139 Authentication unsuccessful, the user credentials were incorrect. [host]",
     "SMTP-BASIC-CREDENTIALS"),
    ("550 5.7.30 Basic authentication is not supported for Client Submission.", "SMTP-BASIC-RETIRED"),
    ("530 5.7.57 Client not authenticated to send mail. [host]", "SMTP-NOT-AUTHENTICATED"),
    ("530 5.7.57 SMTP; Client was not authenticated to send anonymous mail during MAIL FROM",
     "SMTP-NOT-AUTHENTICATED"),
    ("550 5.7.60 SMTP; Client does not have permissions to send as this sender", "M365-SEND-AS-DENIED"),
    ("554 5.2.252 SendAsDenied; user@x not allowed to send as other@x; STOREDRV.Submission.Exception:"
     "SendAsDeniedException.MapiExceptionSendAsDenied", "M365-SEND-AS-DENIED"),
    ("554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied;",
     "M365-SEND-AS-DENIED"),
    ("432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending",
     "SMTP-CONCURRENCY"),
    ("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", "SMTP-CONCURRENCY"),
    ("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process "
     "message", "SMTP-QUOTA"),
    ("552 5.3.4 Message size exceeds fixed maximum message size", "M365-TOO-LARGE"),
    ("552 5.3.4 Header size exceeds fixed maximum size", "M365-HEADER-TOO-LARGE"),
]


def test_the_catalogue_is_valid() -> None:
    raw = tomllib.loads((resources.files("relay365.catalogue") / "catalogue.toml").read_text("utf-8"))
    ids = [e["id"] for e in raw["entry"]]
    assert len(ids) == len(set(ids)), "ids are unique"
    entries = catalogue()
    assert len(entries) >= 40
    keys: dict[str, str] = {}
    for e in entries.values():
        assert re.fullmatch(r"(R365|AAD|M365|SMTP)-[A-Z0-9-]+", e.id), e.id
        assert e.title and e.cause and e.fix, e.id
        assert e.kind in ("transient", "permanent", "config", "auth"), e.id
        assert e.title == e.title.strip() and not e.title.endswith("."), e.id
        if e.id.startswith(MICROSOFT):
            assert e.link.startswith("https://"), f"{e.id} needs a link to Microsoft's documentation"
        for key in (*e.keys, *e.exact):
            assert key.strip(), e.id
            owner = keys.setdefault(key.lower(), e.id)
            assert owner == e.id, f"key {key!r} names both {owner} and {e.id}"


@pytest.mark.parametrize(("text", "entry_id"), SEED_ROWS)
def test_explain_finds_each_row_of_the_seeds_table(text: str, entry_id: str) -> None:
    result = CliRunner().invoke(app, ["explain", "--json", text])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["id"] == entry_id
    assert shown["title"] and shown["cause"] and shown["fix"] and shown["link"]


def test_the_seeds_incomplete_causes_are_corrected_and_still_named() -> None:
    no_mailbox = catalogue()["M365-NO-MAILBOX"]
    assert "Exchange Online" in no_mailbox.cause and "missing API permissions" in no_mailbox.cause
    assert "Licenses and apps" in no_mailbox.fix
    forbidden = catalogue()["M365-FORBIDDEN"]
    assert "browser profile" in forbidden.cause and "Consent on behalf of your organization" in forbidden.fix
    security = catalogue()["SMTP-SECURITY-DEFAULTS"]
    assert "Properties" in security.fix and "OAuth 2.0" in security.fix


@pytest.mark.parametrize(("text", "entry_id"), REFERENCE)
def test_every_error_of_the_reference_has_its_entry(text: str, entry_id: str) -> None:
    found = find_entry(text)
    assert found is not None and found.id == entry_id, (text, found)


def _filled(template: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "x", template)


def _sim_data(name: str) -> dict[str, Any]:
    return tomllib.loads((Path(m365sim.__file__).parent / "data" / name).read_text("utf-8"))


def test_every_error_m365sim_can_answer_is_explained() -> None:
    """m365sim's data files hold every error text the emulator produces: none is unknown."""
    missing = []
    for key, error in _sim_data("identity_errors.toml").items():
        code = key.split("_")[0]
        if find_entry(f"AADSTS{code}: {_filled(error['message'])}", error["error"]) is None:
            missing.append(f"AADSTS{key}")
    for key, error in _sim_data("graph_errors.toml").items():
        if find_entry(error["code"], _filled(error["message"])) is None:
            missing.append(f"graph {key}")
    for key, reply in _sim_data("smtp_replies.toml").items():
        if isinstance(reply, str) and reply[:1] in "45" and find_entry(_filled(reply)) is None:
            missing.append(f"smtp {key}")
    assert missing == []


def test_the_longest_key_wins_and_bare_words_match_only_whole() -> None:
    match = match_entry("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled")
    assert match is not None and match.entry.id == "SMTP-AUTH-DISABLED"
    assert find_entry("Forbidden") is not None
    # "Not Found" names the no-mailbox entry only as the whole text
    assert find_entry("AADSTS90002: Tenant 'x' not found.").id == "AAD-TENANT-NOT-FOUND"  # type: ignore[union-attr]
    assert find_entry("r365-secret-expiring").id == "R365-SECRET-EXPIRING"  # type: ignore[union-attr]
    assert find_entry("nothing we know about") is None
