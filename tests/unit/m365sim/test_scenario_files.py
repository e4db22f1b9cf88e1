"""m365sim's public names and its scenario files, read without running the emulator."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

import m365sim
from m365sim import load_scenario

SHIPPED = ["needs-admin-approval", "no-mail-send-permission", "no-mailbox", "no-send-as",
           "refresh-revoked", "secret-expired", "security-defaults", "seed", "single-tenant",
           "throttled"]


def test_public_surface_is_what_all_says() -> None:
    public = {n for n, v in vars(m365sim).items()
              if n.isidentifier() and not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert sorted(m365sim.__all__) == sorted(public)


def test_every_shipped_scenario_loads_and_says_what_it_reproduces() -> None:
    assert m365sim.shipped_scenarios() == SHIPPED
    for name in SHIPPED:
        scenario = load_scenario(name)
        assert scenario.description, name
        text = (Path(m365sim.__file__).parent / "scenarios" / f"{name}.toml").read_text()
        assert text.startswith(f"# {name}:"), f"{name}.toml must open with a comment on what it reproduces"


def test_scenario_errors_name_the_key_and_an_example(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[tenant]\ndomains = ["contoso.com"]\n[[apps]]\nclient_id = "x"\n'
                   'sign_in_audience = "Everyone"\n')
    with pytest.raises(m365sim.ScenarioError, match=r"apps\[0\]\.sign_in_audience: unknown value "
                       r"'Everyone' \(for example: AzureADMyOrg"):
        load_scenario(bad)
    with pytest.raises(m365sim.ScenarioError, match="no shipped scenario named 'nope'"):
        load_scenario("nope")
    grant = tmp_path / "grant.toml"
    grant.write_text('[tenant]\ndomains = ["contoso.com"]\n[[shared_mailboxes]]\n'
                     'address = "info@contoso.com"\nsend_as = ["ghost@contoso.com"]\n')
    with pytest.raises(m365sim.ScenarioError, match=r"'ghost@contoso\.com' is not a user"):
        load_scenario(grant)


def test_a_custom_scenario_extends_a_shipped_one(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('extends = "seed"\n[[users]]\nupn = "admin@contoso.com"\nmfa = true\n'
                    '[limits]\nmessages_per_minute = 5\n')
    scenario = load_scenario(path)
    admin = scenario.user("admin@contoso.com")
    assert admin is not None and admin.mfa and admin.admin  # merged, not replaced
    assert scenario.limits.messages_per_minute == 5
    assert scenario.shared_mailbox("info@contoso.com") is not None
