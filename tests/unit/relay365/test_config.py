"""Configuration, the failure catalogue, and the Entra plan."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from relay365.catalogue import catalogue, find_entry
from relay365.config import load_settings, settings_from_dict, write_settings
from relay365.errors import ConfigError, NeedsSignIn, TransientError
from relay365.setup import azure_cli_script, entra_plan

CONN = {"name": "contoso", "tenant": "contoso.onmicrosoft.com", "client_id": "11111111-2222",
        "account": "admin@contoso.com", "senders": ["admin@contoso.com", "info@contoso.com"]}


def test_env_overrides_every_key(tmp_path: Path) -> None:
    s = settings_from_dict({"connections": [CONN]}, env={
        "RELAY365_STATE_DIR": str(tmp_path),
        "RELAY365_CONNECTION_CONTOSO_CLIENT_SECRET": "from-env",
        "RELAY365_CONNECTION_CONTOSO_SENDERS": "admin@contoso.com, sales@contoso.com",
    })
    conn = s.connection("contoso")
    assert s.state_dir == tmp_path
    assert conn.client_secret is not None and conn.client_secret.get_secret_value() == "from-env"
    assert conn.senders == ["admin@contoso.com", "sales@contoso.com"]
    assert "from-env" not in repr(conn)


def test_errors_name_file_key_problem_and_example(tmp_path: Path) -> None:
    path = tmp_path / "relay365.toml"
    path.write_text('[[connections]]\nname = "contoso"\ntenant = "t"\nclient_id = "x"\n'
                    'senders = ["not-an-address"]\nmode = "app-only"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert f"{path}: connections[contoso].senders: 'not-an-address' is not an email address" in message
    assert 'for example: senders = ["admin@contoso.com", "info@contoso.com"]' in message
    assert info.value.entry.id == "R365-CONFIG"
    with pytest.raises(ConfigError, match="no configuration file; run `relay365 init`"):
        load_settings(tmp_path / "missing.toml", env={})


def test_a_sender_belongs_to_one_connection() -> None:
    other = {**CONN, "name": "other", "senders": ["info@contoso.com"]}
    with pytest.raises(ConfigError, match=r"sender info@contoso\.com belongs to both 'contoso' and 'other'"):
        settings_from_dict({"connections": [CONN, other]}, env={})


def test_written_config_is_private_and_reads_back(tmp_path: Path) -> None:
    s = settings_from_dict({"connections": [{**CONN, "client_secret": "s3cret"}]}, env={})
    path = tmp_path / "conf" / "relay365.toml"
    write_settings(s, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = load_settings(path, env={})
    assert again.connection().client_secret.get_secret_value() == "s3cret"  # type: ignore[union-attr]
    assert again.connection().senders == s.connection().senders


def test_catalogue_is_complete_and_unique() -> None:
    entries = catalogue()
    assert len(entries) == len({e.id for e in entries.values()})
    for e in entries.values():
        assert e.title and e.cause and e.fix, e.id
        assert e.kind in ("transient", "permanent", "config", "auth"), e.id


@pytest.mark.parametrize(("text", "entry"), [
    ("535 5.7.139 Authentication unsuccessful, user is locked by your organization's security "
     "defaults policy", "SMTP-SECURITY-DEFAULTS"),
    ("AADSTS50194: Application 'x' is not configured as a multi-tenant application.",
     "AAD-SINGLE-TENANT-COMMON"),
    ("ErrorSendAsDenied", "M365-SEND-AS-DENIED"),
    ("MailboxNotEnabledForRESTAPI", "M365-NO-MAILBOX"),
    ("AADSTS7000222: The provided client secret keys for app 'x' are expired.", "AAD-SECRET-EXPIRED"),
])
def test_find_entry_picks_the_most_specific(text: str, entry: str) -> None:
    found = find_entry(text)
    assert found is not None and found.id == entry


def test_errors_carry_their_diagnosis() -> None:
    err = NeedsSignIn("refresh failed", entry="AAD-REFRESH-REVOKED", code="AADSTS50173")
    assert "relay365 login" in err.fix
    assert "AADSTS50173" in str(err) and "AAD-REFRESH-REVOKED" in str(err)
    assert TransientError("busy", retry_after=3).retry_after == 3


def test_entra_plan_follows_the_connection() -> None:
    s = settings_from_dict({"connections": [CONN]}, env={})
    plan = entra_plan(s.connection(), today=dt.date(2026, 11, 27))
    assert plan.delegated == ("Mail.Send", "Mail.Send.Shared", "Mail.ReadWrite", "offline_access")
    titles = [st.title for st in plan.steps]
    assert "Give the account Send As on the shared mailbox(es)" in titles
    assert any("2028-11-26" in st.detail for st in plan.steps)  # the expiry to note
    assert "AADSTS50194" in plan.steps[0].detail
    own_only = settings_from_dict({"connections": [{**CONN, "senders": ["admin@contoso.com"],
                                                   "large_messages": False}]}, env={})
    assert entra_plan(own_only.connection()).delegated == ("Mail.Send", "offline_access")
    app_only = settings_from_dict({"connections": [{**CONN, "mode": "app-only"}]}, env={})
    assert entra_plan(app_only.connection()).application == ("Mail.Send", "Mail.ReadWrite")


def test_azure_cli_script_adds_every_permission_by_id() -> None:
    s = settings_from_dict({"connections": [CONN]}, env={})
    script = azure_cli_script(s.connection())
    assert "e383f46e-2787-4529-855e-0e479a3ffac0=Scope" in script  # Mail.Send
    assert "a367ab51-6b49-43bf-a716-a1fb06d2a174=Scope" in script  # Mail.Send.Shared
    assert "7427e0e9-2fba-42fe-b0c0-848c9e6a8182=Scope" in script  # offline_access
    assert "az ad app permission admin-consent" in script
    assert "--web-redirect-uris http://localhost" in script
    assert "Add-RecipientPermission -Identity info@contoso.com -Trustee admin@contoso.com" in script


def test_a_sealed_client_secret_is_opened_only_with_the_installation_key(tmp_path: Path) -> None:
    from relay365.auth import SecretBox, client_secret
    from relay365.errors import ConfigError

    box = SecretBox.from_environment(tmp_path / "secret.key")
    data = {"state_dir": str(tmp_path), "connections": [
        {"name": "a", "tenant": "t", "client_id": "c", "client_secret": box.seal("the secret")}]}
    settings = settings_from_dict(data, env={})
    assert client_secret(settings.connection("a")) == "the secret"
    assert "the secret" not in repr(settings)
    other = settings_from_dict({**data, "secret_key_file": str(tmp_path / "other.key")}, env={})
    with pytest.raises(ConfigError, match="encrypted with another key"):
        client_secret(other.connection("a"))
    plain = settings_from_dict({**data, "connections": [{**data["connections"][0], "client_secret": "p"}]},
                               env={})
    assert client_secret(plain.connection("a")) == "p"
