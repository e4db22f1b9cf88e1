"""RELAY365_* variables over relay365.toml: every key reachable, values parsed or refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from relay365.auth import SecretBox, client_secret
from relay365.config import (
    ConnectionSettings,
    Settings,
    connection_env_variable,
    env_variable,
    load_settings,
    settings_from_dict,
    update_config_file,
    write_settings,
)
from relay365.errors import ConfigError

CONN = {"name": "contoso", "tenant": "contoso.onmicrosoft.com", "client_id": "11111111-2222",
        "account": "admin@contoso.com", "senders": ["admin@contoso.com", "info@contoso.com"]}
# One table in each list of tables, so that every __0__ variable has a table to change.
FILE: dict[str, Any] = {"connections": [CONN],
                        "relay": {"users": [{"name": "printer", "password_hash": "$argon2id$h"}],
                                  "api_keys": [{"name": "wordpress", "key_hash": "$argon2id$k"}]}}


# -- every key ---------------------------------------------------------------------------------


def keys(model: type[BaseModel], path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...],
                                                                                     FieldInfo]]:
    """(path, field) of every key under ``model`` that holds a value (a list of tables too, whole,
    and the keys of its first table); the connections' keys are named by the connection."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        element = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if path == () and name == "connections":
            yield (name,), field
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from keys(annotation, (*path, name))
        elif isinstance(element, type) and issubclass(element, BaseModel):
            yield (*path, name), field
            yield from keys(element, (*path, name, 0))
        else:
            yield (*path, name), field


# Values for keys whose type alone does not give a valid one different from the default; and
# the variables that must come with them.
SAMPLES: dict[str, tuple[str, Any]] = {
    "connections": (json.dumps([{**CONN, "name": "other"}]), None),
    "relay.smtp": ('[{"host": "10.0.0.5", "port": 25}, {"port": 587}]', None),
    "relay.users": ('[{"name": "scanner", "password_hash": "$argon2id$s"}]', None),
    "relay.api_keys": ('[{"name": "php", "key_hash": "$argon2id$p"}]', None),
    "relay.smtp.0.tls": ("starttls", "starttls"),
    "alerts.email_to": ("it@contoso.com, ops@contoso.com", ["it@contoso.com", "ops@contoso.com"]),
    "alerts.expiry_days": ("3, 9", [9, 3]),  # sorted, latest first
    "alerts.summary_hour": ("23", 23),
    "default_sender": ("info@contoso.com", "info@contoso.com"),
    "account": ("it@contoso.com", "it@contoso.com"),
    "senders": ("admin@contoso.com,sales@contoso.com", ["admin@contoso.com", "sales@contoso.com"]),
    "secret_expires": ("2028-06-01", "2028-06-01"),
    "mode": ("app-only", "app-only"),
}
WITH = {"relay.smtp.0.tls": {"relay.smtp.0.certificate_file": "/srv/c.pem",
                             "relay.smtp.0.private_key_file": "/srv/k.pem"},
        "certificate_file": {"private_key_file": "/srv/k.pem"},
        "private_key_file": {"certificate_file": "/srv/c.pem"}}


def sample(key: str, field: FieldInfo) -> tuple[str, Any]:
    """A variable's text for ``key`` and the value it should give (JSON-like), not the default."""
    if key in SAMPLES:
        return SAMPLES[key]
    annotation = field.annotation
    optional = type(None) in typing.get_args(annotation)  # X | None
    kind = next(a for a in typing.get_args(annotation) if a is not type(None)) if optional else annotation
    default = field.default if field.default is not PydanticUndefined else None
    if typing.get_origin(annotation) is typing.Literal:
        other = next(a for a in typing.get_args(annotation) if a != default)
        return other, other
    if kind is bool:
        return ("false", False) if default else ("true", True)
    if kind in (int, float):
        return str(int(default or 0) + 1), int(default or 0) + 1
    if kind is Path:
        return "/srv/relay365/x", "/srv/relay365/x"
    if kind is SecretStr:
        return "s3cret", "s3cret"
    if typing.get_origin(kind) is list:
        return "a, b", ["a", "b"]
    if kind is str:
        value = f"{field.examples[0]}-x" if field.examples else "changed"
        return value, value
    raise AssertionError(f"{key}: no sample for {annotation}; add one to SAMPLES")


def node_at(settings: Settings, path: tuple[str | int, ...]) -> Any:
    node: Any = settings
    for step in path:
        node = node[step] if isinstance(step, int) else getattr(node, step)
    return node


def value_at(settings: Settings, path: tuple[str | int, ...]) -> Any:
    """The value at ``path`` as JSON would say it (a secret's plain text)."""
    node = node_at(settings, path)
    if isinstance(node, SecretStr):
        return node.get_secret_value()
    return json.loads(json.dumps(node, default=str))


@pytest.mark.parametrize(("path", "field"), list(keys(Settings)),
                         ids=[".".join(map(str, p)) for p, _ in keys(Settings)])
def test_every_key_has_a_variable_that_sets_it(path: tuple[str | int, ...], field: FieldInfo) -> None:
    key = ".".join(map(str, path))
    text, expected = sample(key, field)
    env = {env_variable(path): text}
    env.update({env_variable(tuple(int(p) if p.isdigit() else p for p in k.split("."))): v
                for k, v in WITH.get(key, {}).items()})
    settings = settings_from_dict(FILE, env=env)
    if expected is None:  # a whole list of tables
        tables = node_at(settings, path)
        assert [t.model_dump(mode="json", exclude_defaults=True) for t in tables] == json.loads(text)
    else:
        assert value_at(settings, path) == expected
    assert FILE["relay"]["users"][0] == {"name": "printer", "password_hash": "$argon2id$h"}  # not changed


@pytest.mark.parametrize("key", [k for k in ConnectionSettings.model_fields if k != "name"])
def test_every_key_of_a_connection_has_a_variable_that_sets_it(key: str) -> None:
    text, expected = sample(key, ConnectionSettings.model_fields[key])
    env = {connection_env_variable("contoso", key): text}
    env.update({connection_env_variable("contoso", k): v for k, v in WITH.get(key, {}).items()})
    assert value_at(settings_from_dict(FILE, env=env), ("connections", 0, key)) == expected


def test_the_reference_names_the_same_variables() -> None:
    reference = (Path(__file__).resolve().parents[3] / "docs" / "reference" / "configuration.md").read_text()
    for path, _ in keys(Settings):
        shown = tuple("<N>" if p == 0 else p for p in path)
        assert f"`{env_variable(shown)}`" in reference, path
    assert "`RELAY365_CONNECTION_<NAME>_CLIENT_SECRET`" in reference


# -- precedence ----------------------------------------------------------------------------------


def test_the_environment_wins_over_the_file_and_the_file_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "relay365.toml"
    path.write_text('[delivery]\nworkers = 4\n[[relay.smtp]]\nhost = "127.0.0.1"\nport = 2526\n')
    assert load_settings(path, env={}).delivery.workers == 4
    assert load_settings(path, env={"RELAY365_DELIVERY__WORKERS": "5"}).delivery.workers == 5
    (tmp_path / "empty.toml").write_text("")
    assert load_settings(tmp_path / "empty.toml", env={}).delivery.workers == 8
    # A key the file does not give keeps the file's others.
    settings = load_settings(path, env={"RELAY365_RELAY__SMTP__0__HOST": "10.0.0.5",
                                        "RELAY365_DELIVERY__MINIMAL_BACKOFF": "1.5"})
    assert (settings.relay.smtp[0].host, settings.relay.smtp[0].port) == ("10.0.0.5", 2526)
    assert (settings.delivery.workers, settings.delivery.minimal_backoff) == (4, 1.5)


def test_a_whole_list_of_tables_first_then_the_keys_of_its_tables() -> None:
    settings = settings_from_dict(FILE, env={
        "RELAY365_RELAY__SMTP__1__REQUIRE_AUTH": "true",
        "RELAY365_RELAY__SMTP": '[{"port": 25}, {"port": 587}]',
        "RELAY365_CONNECTIONS": json.dumps([{**CONN, "name": "fabrikam", "senders": ["a@fabrikam.com"]}]),
        "RELAY365_CONNECTION_FABRIKAM_TENANT": "fabrikam.onmicrosoft.com",
        "RELAY365_CONNECTION_CONTOSO_TENANT": "gone.example.com",  # no such connection any more
    })
    assert [(s.port, s.require_auth) for s in settings.relay.smtp] == [(25, False), (587, True)]
    assert [(c.name, c.tenant) for c in settings.connections] == [("fabrikam", "fabrikam.onmicrosoft.com")]


def test_the_default_list_of_listeners_takes_keys_too() -> None:
    settings = settings_from_dict({}, env={"RELAY365_RELAY__SMTP__0__PORT": "2600"})
    assert [(s.host, s.port) for s in settings.relay.smtp] == [("127.0.0.1", 2600)]


# -- values --------------------------------------------------------------------------------------


def test_lists_are_json_arrays_or_comma_separated() -> None:
    def urls(text: str) -> list[str]:
        return settings_from_dict({}, env={"RELAY365_ALERTS__URLS": text}).alerts.urls

    assert urls("ntfy://a, json://b/hook ,") == ["ntfy://a", "json://b/hook"]
    assert urls('["mailto://u:p@example.com?to=a@x.com,b@x.com"]') == ["mailto://u:p@example.com?to=a@x.com,b@x.com"]
    assert urls(" []") == []
    assert urls("") == []
    days = settings_from_dict({}, env={"RELAY365_ALERTS__EXPIRY_DAYS": "[30, 1]"}).alerts.expiry_days
    assert days == [30, 1]


def test_an_empty_value_makes_an_optional_key_none() -> None:
    data = {"store": "postgresql://relay@db/relay365", "alerts": {"email_from": "alerts@contoso.com"}}
    settings = settings_from_dict(data, env={"RELAY365_STORE": "", "RELAY365_ALERTS__EMAIL_FROM": ""})
    assert settings.store is None and settings.alerts.email_from is None


def test_booleans_read_as_toml_and_more() -> None:
    for text, value in [("true", True), ("FALSE", False), ("1", True), ("no", False), ("on", True)]:
        assert settings_from_dict({}, env={"RELAY365_ALERTS__KEEP_ALIVE": text}).alerts.keep_alive is value


def test_other_relay365_variables_are_left_alone() -> None:
    settings = settings_from_dict(FILE, env={
        "RELAY365_CONFIG": "/etc/relay365/relay365.toml", "RELAY365_SECRET_KEY": "x",
        "RELAY365_SENDMAIL_SMTP": "127.0.0.1:2525", "RELAY365_API_URL": "http://relay:8025",
        "RELAY365_CONNECTION_OTHER_TENANT": "other.example.com", "OTHER__VARIABLE": "1"})
    assert settings == settings_from_dict(FILE, env={})


@pytest.mark.parametrize(("env", "message"), [
    ({"RELAY365_DELIVERY__WORKERS": "abc"},
     "environment variable RELAY365_DELIVERY__WORKERS: delivery.workers: Input should be a valid integer"),
    ({"RELAY365_ADMIN__SESSION_HOURS": "a day"},
     "environment variable RELAY365_ADMIN__SESSION_HOURS: admin.session_hours: Input should be a valid "
     "number"),
    ({"RELAY365_ALERTS__KEEP_ALIVE": "maybe"},
     "environment variable RELAY365_ALERTS__KEEP_ALIVE: alerts.keep_alive: Input should be a valid boolean"),
    ({"RELAY365_ALERTS__SUMMARY": "hourly"},
     "RELAY365_ALERTS__SUMMARY: alerts.summary: Input should be 'off', 'daily' or 'weekly'"),
    ({"RELAY365_RELAY__SMTP__0__PORT": "70000"},
     "RELAY365_RELAY__SMTP__0__PORT: relay.smtp.0.port: Input should be less than or equal to 65535"),
    ({"RELAY365_ALERTS__EMAIL_TO": "it@contoso.com, admins"},
     "RELAY365_ALERTS__EMAIL_TO: alerts.email_to: 'admins' is not an email address"),
    ({"RELAY365_ALERTS__EXPIRY_DAYS": "30, soon"},
     "RELAY365_ALERTS__EXPIRY_DAYS: alerts.expiry_days.1: Input should be a valid integer"),
    ({"RELAY365_CONNECTION_CONTOSO_SECRET_EXPIRES": "soon"},
     "RELAY365_CONNECTION_CONTOSO_SECRET_EXPIRES: connections[contoso].secret_expires: Input should be a "
     "valid date"),
    ({"RELAY365_RELAY__SMTP": '[{"port": "smtp"}]'},
     "environment variable RELAY365_RELAY__SMTP: relay.smtp.0.port: Input should be a valid integer"),
    ({"RELAY365_ALERTS__URLS": '["ntfy://a"'}, "RELAY365_ALERTS__URLS: not valid JSON"),
    ({"RELAY365_RELAY__SMTP": '{"port": 25}'}, "RELAY365_RELAY__SMTP: expected a JSON array of tables"),
    ({"RELAY365_DELIVERY__WORKER": "4"}, "RELAY365_DELIVERY__WORKER: delivery has no key 'worker' (its keys: "
                                         "workers, lease_seconds"),
    ({"RELAY365_DELIVERY": "4"}, "RELAY365_DELIVERY: [delivery] is a table: set its keys, as "
                                 "RELAY365_DELIVERY__<KEY>"),
    ({"RELAY365_STORE__URL": "x"}, "RELAY365_STORE__URL: store is not a table"),
    ({"RELAY365_RELAY__SMTP__PORT": "25"}, "RELAY365_RELAY__SMTP__PORT: relay.smtp is a list of tables"),
    ({"RELAY365_RELAY__SMTP__1__PORT": "25"},
     "RELAY365_RELAY__SMTP__1__PORT: relay.smtp has no table 1 (it has only table 0); to add one, set "
     "RELAY365_RELAY__SMTP to a JSON array of them all"),
    ({"RELAY365_RELAY__SMTP__0__TLS": "starttls"},
     "<settings>: relay.smtp.0: tls = 'starttls' needs certificate_file and private_key_file (with "
     "RELAY365_RELAY__SMTP__0__TLS from the environment)"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else None)
def test_a_bad_variable_is_a_config_error_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(FILE, env=env)
    assert message in str(info.value)
    assert info.value.entry.id == "R365-CONFIG"


# -- secrets -------------------------------------------------------------------------------------


def test_a_secret_from_the_environment_may_be_sealed_and_never_shows(tmp_path: Path) -> None:
    box = SecretBox.from_environment(tmp_path / "secret.key")
    sealed = box.seal("the-secret")
    data = {**FILE, "secret_key_file": str(tmp_path / "secret.key")}
    for given in (sealed, "the-secret"):
        conn = settings_from_dict(data, env={"RELAY365_CONNECTION_CONTOSO_CLIENT_SECRET": given}).connection()
        assert client_secret(conn) == "the-secret"
        assert given not in repr(conn)


def test_variables_never_reach_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "relay365.toml"
    write_settings(settings_from_dict(FILE, env={}), path)
    monkeypatch.setenv("RELAY365_DELIVERY__WORKERS", "3")
    monkeypatch.setenv("RELAY365_CONNECTION_CONTOSO_CLIENT_SECRET", "from-env")
    settings = update_config_file(path, lambda data: {**data, "alerts": {"summary": "weekly"}})
    assert settings.delivery.workers == 3 and settings.alerts.summary == "weekly"
    text = path.read_text()
    assert "workers" not in text and "from-env" not in text and 'summary = "weekly"' in text


# -- through the command line ----------------------------------------------------------------------


def relay365(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY365_")}
    return subprocess.run([sys.executable, "-m", "relay365", *args], capture_output=True, text=True,
                          timeout=120, env={**clean, "COLUMNS": "200", **env})


def test_config_show_prints_the_configuration_with_the_variables_applied(tmp_path: Path) -> None:
    path = tmp_path / "relay365.toml"
    write_settings(settings_from_dict({**FILE, "store": "postgresql://relay:db-pass@db/relay365"}, env={}),
                   path)
    shown = relay365("config", "show", "--json", "--config", str(path), env={
        "RELAY365_DELIVERY__WORKERS": "3",
        "RELAY365_RELAY__SMTP__0__HOST": "10.0.0.5",
        "RELAY365_ALERTS__URLS": '["ntfy://relay365-alerts", "slack://token-a/token-b"]',
        "RELAY365_ADMIN__SESSION_HOURS": "1.5",
        "RELAY365_CONNECTION_CONTOSO_CLIENT_SECRET": "env-secret",
    })
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["delivery"]["workers"] == 3
    assert data["relay"]["smtp"][0]["host"] == "10.0.0.5"
    assert data["admin"]["session_hours"] == 1.5
    assert data["alerts"]["urls"] == ["ntfy://**********", "slack://**********"]
    assert data["connections"][0]["client_secret"] == "**********"
    assert data["store"] == "postgresql://relay:**********@db/relay365"
    assert data["relay"]["users"][0]["password_hash"] == "**********"
    for secret in ("env-secret", "token-a", "db-pass", "$argon2id$h"):
        assert secret not in shown.stdout

    toml = relay365("config", "show", "--config", str(path), env={"RELAY365_DELIVERY__WORKERS": "3"})
    assert toml.returncode == 0 and "[delivery]\nworkers = 3\n" in toml.stdout

    bad = relay365("config", "show", "--config", str(path), env={"RELAY365_DELIVERY__WORKERS": "abc"})
    assert bad.returncode == 1
    assert "RELAY365_DELIVERY__WORKERS" in bad.stderr and "valid integer" in bad.stderr
    assert "R365-CONFIG" in bad.stderr
