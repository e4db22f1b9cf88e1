"""Setup: create and edit connections, with this page's App Callback URL and the Entra
checklist for each (from the same code as `relay365 init`).

The form edits relay365.toml (through ``AdminSite.change_settings``): the relay runs on the
result before the page answers.  A client secret typed here is written to the file sealed
(encrypted with the installation's key, as tokens are in the store) and never goes back to
the browser: the form shows only that one is set, where it comes from and when it expires.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..auth import SEALED_PREFIX, SecretBox
from ..config import DEFAULT_AUTHORITY_HOST, DEFAULT_GRAPH_URL, ConnectionSettings
from ..diagnose import local_expiries
from ..errors import ConfigError, Relay365Error
from ..setup import entra_plan
from ._signin import callback_url
from ._site import Admin, action, page

# Form fields copied to the connection's table as typed (empty: the key is left out).
_TEXT_FIELDS = ("tenant", "client_id", "mode", "secret_expires", "account", "default_sender",
                "sender_name", "transport", "authority_host", "graph_url", "ca_file", "smtp_host")
_DEFAULTS = {"mode": "delegated", "transport": "graph", "authority_host": DEFAULT_AUTHORITY_HOST,
             "graph_url": DEFAULT_GRAPH_URL, "smtp_host": "smtp.office365.com"}


def _secret_source(conn: ConnectionSettings | None) -> str | None:
    """Where the connection's credential comes from, in words (never the secret itself)."""
    if conn is None:
        return None
    if conn.client_secret is not None:
        sealed = conn.client_secret.get_secret_value().startswith(SEALED_PREFIX)
        return "a client secret is set in relay365.toml" + (" (encrypted)" if sealed else "")
    if conn.client_secret_env:
        return f"the client secret is read from the environment variable {conn.client_secret_env}"
    if conn.client_secret_file:
        return f"the client secret is read from {conn.client_secret_file}"
    if conn.certificate_file:
        return f"the certificate {conn.certificate_file} is used"
    return None


def _secret_days_left(conn: ConnectionSettings) -> int | None:
    """Days until the client secret expires, counted as the status page and the alerts count."""
    now = dt.datetime.now(dt.UTC)
    return next((e.days_left(now) for e in local_expiries(conn) if e.kind == "client secret"), None)


def _form_values(conn: ConnectionSettings | None) -> dict[str, str]:
    if conn is None:
        return {"name": "", "mode": "delegated", "transport": "graph", "senders": "",
                "authority_host": DEFAULT_AUTHORITY_HOST, "graph_url": DEFAULT_GRAPH_URL,
                "smtp_host": "smtp.office365.com", "smtp_port": "587"}
    data = conn.model_dump(mode="json")
    values = {k: "" if data.get(k) is None else str(data[k]) for k in _TEXT_FIELDS}
    values.update(name=conn.name, senders=", ".join(conn.senders), smtp_port=str(conn.smtp_port),
                  force_from="on" if conn.force_from else "")
    return values


def _entry_from_form(form: FormData, existing: dict[str, Any] | None,
                     seal: Callable[[str], str]) -> dict[str, Any]:
    """The connection's TOML table from the form, keeping what the form does not show."""
    entry = dict(existing or {})
    for key in _TEXT_FIELDS:
        value = str(form.get(key) or "").strip()
        if value and value != _DEFAULTS.get(key):
            entry[key] = value
        else:
            entry.pop(key, None)
    entry["senders"] = [s.strip() for s in str(form.get("senders") or "").replace(";", ",").split(",")
                        if s.strip()]
    port = str(form.get("smtp_port") or "").strip()
    if port and port != "587":
        if not port.isdigit():
            raise ConfigError(f"smtp_port: {port!r} is not a port number (for example: 587)")
        entry["smtp_port"] = int(port)
    else:
        entry.pop("smtp_port", None)
    entry["force_from"] = form.get("force_from") == "on"
    if not entry["force_from"]:
        entry.pop("force_from")
    secret = str(form.get("client_secret") or "").strip()
    if secret:  # empty keeps the stored one: the page never has it to send back
        entry["client_secret"] = seal(secret)
    return entry


async def connections_page(admin: Admin, request: Request) -> Response:
    connections = admin.settings.connections
    states = {c.name: await admin.store.connection_state(c.name) for c in connections}
    return admin.render(request, "setup_list.html", connections=connections, states=states,
                        days_left={c.name: _secret_days_left(c) for c in connections})


async def _show(admin: Admin, request: Request, conn: ConnectionSettings | None, *,
                values: dict[str, str] | None = None, error: str | None = None,
                status_code: int = 200) -> Response:
    callback = callback_url(request)
    plan = None
    state = None
    if conn is not None:
        plan = entra_plan(conn.model_copy(update={"redirect_uri": callback}))
        state = await admin.store.connection_state(conn.name)
    return admin.render(request, "connection.html", status_code, conn=conn,
                        values=values or _form_values(conn), error=error, callback=callback,
                        plan=plan, state=state,
                        secret_source=_secret_source(conn),
                        days_left=_secret_days_left(conn) if conn is not None else None)


async def new_page(admin: Admin, request: Request) -> Response:
    return await _show(admin, request, None)


async def connection_page(admin: Admin, request: Request) -> Response:
    try:
        conn = admin.settings.connection(request.path_params["name"])
    except Relay365Error as exc:
        return admin.render(request, "error.html", 404, title="No such connection", message=exc.message)
    return await _show(admin, request, conn)


async def _save(admin: Admin, request: Request, form: FormData) -> Response:
    editing = request.path_params.get("name")
    name = editing or str(form.get("name") or "").strip()
    current = None
    if editing:
        try:
            current = admin.settings.connection(editing)
        except Relay365Error as exc:
            return admin.render(request, "error.html", 404, title="No such connection", message=exc.message)

    # Encrypted with the installation's key: the file keeps no secret in clear.
    box = SecretBox.from_environment(admin.settings.key_file)

    def change(data: dict[str, Any]) -> dict[str, Any]:
        connections = list(data.get("connections", []))
        index = next((i for i, c in enumerate(connections) if c.get("name") == name), None)
        if editing is None and name == "new":
            raise ConfigError("name: 'new' is taken by the page itself: choose another name")
        if editing is None and index is not None:
            raise ConfigError(f"a connection named {name!r} exists already: open it from Setup to edit it")
        if editing is not None and index is None:
            raise ConfigError(f"connection {name!r} is not in the configuration file (it comes from "
                              "elsewhere), so the page cannot edit it")
        entry = _entry_from_form(form, connections[index] if index is not None else None, box.seal)
        entry["name"] = name
        if index is None:
            connections.append(entry)
        else:
            connections[index] = entry
        return {**data, "connections": connections}

    try:
        await admin.site.change_settings(change)
    except ConfigError as exc:
        values = {k: str(v) for k, v in form.items() if k not in ("client_secret", "csrf")}
        values.setdefault("force_from", "")
        return await _show(admin, request, current, values=values, error=exc.message, status_code=400)
    admin.flash(request, f"Connection {name!r} saved. "
                         + ("Next: sign in with Microsoft 365." if not editing else ""))
    return RedirectResponse(f"/setup/{name}", status_code=303)


async def _delete(admin: Admin, request: Request, form: FormData) -> Response:
    name = request.path_params["name"]

    def change(data: dict[str, Any]) -> dict[str, Any]:
        connections = [c for c in data.get("connections", []) if c.get("name") != name]
        return {**data, "connections": connections}

    try:
        await admin.site.change_settings(change)
    except ConfigError as exc:
        admin.flash(request, exc.message, "error")
        return RedirectResponse(f"/setup/{name}", status_code=303)
    admin.flash(request, f"Connection {name!r} removed. Its queued mail waits until a connection "
                         "sends as its senders again.")
    return RedirectResponse("/setup", status_code=303)


ROUTES = [
    ("/setup", page(connections_page), ["GET"]),
    ("/setup/new", page(new_page), ["GET"]),
    ("/setup/new", action(_save), ["POST"]),
    ("/setup/{name}", page(connection_page), ["GET"]),
    ("/setup/{name}", action(_save), ["POST"]),
    ("/setup/{name}/delete", action(_delete), ["POST"]),
]
