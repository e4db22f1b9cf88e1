"""/_sim: the control API of a running emulator (plain JSON, no auth, loopback only).

What the Python ``Simulator`` offers in-process, this offers to other processes and
languages: read delivered mail, read the request log, move the clock, revoke sessions,
change the scenario, inject faults, and approve device codes.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ._identity import complete_device_code
from ._mailstore import DeliveredMessage
from ._responses import json_response
from ._scenario import Fault, Scenario, ScenarioError, load_scenario, scenario_from_toml
from ._state import SimState


def _state(request: Request) -> SimState:
    state: SimState = request.app.state.sim
    return state


def _problem(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _message_json(m: DeliveredMessage, *, raw: bool) -> dict[str, Any]:
    out = m.summary()
    if raw:
        out["raw"] = m.raw.decode("utf-8", errors="replace")
        out["raw_base64"] = base64.b64encode(m.raw).decode("ascii")
    return out


async def info(request: Request) -> Response:
    s = _state(request)
    return json_response({
        "scenario": s.scenario.name,
        "tenant": s.scenario.tenant.id,
        "clock": s.clock.now_datetime().isoformat(),
        "delivered": s.mail.total,
        "mailboxes": len(s.mail.addresses()),
    })


async def mailboxes(request: Request) -> Response:
    s = _state(request)
    if request.method == "DELETE":
        s.mail.clear()
        return Response(status_code=204)
    return json_response({"mailboxes": [
        {"address": a, "messages": len(s.mail.messages(a))} for a in s.mail.addresses()]})


async def mailbox_messages(request: Request) -> Response:
    s = _state(request)
    address = request.path_params["address"]
    if request.method == "DELETE":
        s.mail.clear(address)
        return Response(status_code=204)
    raw = request.query_params.get("raw") in ("1", "true")
    return json_response({"address": address.lower(), "messages": [
        _message_json(m, raw=raw) for m in s.mail.messages(address)]})


async def mailbox_message(request: Request) -> Response:
    s = _state(request)
    m = s.mail.find(request.path_params["address"], request.path_params["id"])
    if m is None:
        return _problem(404, "no such message in this mailbox")
    return json_response(_message_json(m, raw=True))


async def mailbox_message_raw(request: Request) -> Response:
    s = _state(request)
    m = s.mail.find(request.path_params["address"], request.path_params["id"])
    if m is None:
        return _problem(404, "no such message in this mailbox")
    return Response(m.raw, media_type="message/rfc822")


async def requests_log(request: Request) -> Response:
    s = _state(request)
    since = float(request.query_params.get("since", "0"))
    return json_response({"requests": [r.to_json() for r in s.request_log if r.time >= since]})


async def clock(request: Request) -> Response:
    s = _state(request)
    if request.method == "POST":
        try:
            seconds = float((await _json(request))["seconds"])
            s.clock.advance(seconds)
        except (KeyError, TypeError, ValueError) as exc:
            return _problem(400, f'send {{"seconds": N}} with N >= 0 ({exc})')
    return json_response({"now": s.clock.now_datetime().isoformat(), "offset": s.clock.offset})


async def revoke(request: Request) -> Response:
    try:
        _state(request).revoke(request.path_params["user"])
    except KeyError as exc:
        return _problem(404, str(exc))
    return Response(status_code=204)


async def scenario(request: Request) -> Response:
    s = _state(request)
    if request.method == "GET":
        return json_response(s.scenario.to_dict())
    body = (await request.body()).decode("utf-8")
    try:
        if "toml" in request.headers.get("content-type", ""):
            new = scenario_from_toml(body, "PUT /_sim/scenario")
        else:
            new = Scenario.from_dict(json.loads(body), source="PUT /_sim/scenario")
    except (ScenarioError, ValueError) as exc:
        return _problem(400, str(exc))
    s.set_scenario(new)
    return json_response({"scenario": new.name})


async def scenario_load(request: Request) -> Response:
    try:
        name = str((await _json(request))["scenario"])
        new = load_scenario(name)
    except (KeyError, ValueError) as exc:
        return _problem(400, f'send {{"scenario": "name or path"}}: {exc}')
    _state(request).set_scenario(new)
    return json_response({"scenario": new.name})


async def faults(request: Request) -> Response:
    s = _state(request)
    if request.method == "DELETE":
        s.clear_faults()
        return Response(status_code=204)
    if request.method == "POST":
        try:
            data = await _json(request)
            fault = Scenario.from_dict({"tenant": {"domains": ["x.example"]}, "faults": [data]},
                                       source="POST /_sim/faults").faults[0]
        except (ScenarioError, ValueError) as exc:
            return _problem(400, str(exc))
        s.add_fault(fault)
    return json_response({"faults": [
        {**_fault_json(a.fault), "remaining": a.remaining} for a in s.faults]})


def _fault_json(f: Fault) -> dict[str, Any]:
    return {k: v for k, v in f.__dict__.items() if v is not None}


async def device_approve(request: Request) -> Response:
    try:
        data = await _json(request)
        complete_device_code(_state(request), request.path_params["code"], str(data["user"]),
                             approve=not data.get("decline", False))
    except KeyError as exc:
        return _problem(404, str(exc))
    return Response(status_code=204)


def control_routes(state: SimState) -> list[BaseRoute]:
    m = "/_sim/mailboxes/{address}/messages"
    return [
        Route("/_sim", info),
        Route("/_sim/mailboxes", mailboxes, methods=["GET", "DELETE"]),
        Route(m, mailbox_messages, methods=["GET", "DELETE"]),
        Route(m + "/{id}", mailbox_message),
        Route(m + "/{id}/raw", mailbox_message_raw),
        Route("/_sim/requests", requests_log),
        Route("/_sim/clock", clock, methods=["GET", "POST"]),
        Route("/_sim/users/{user}/revoke", revoke, methods=["POST"]),
        Route("/_sim/scenario", scenario, methods=["GET", "PUT"]),
        Route("/_sim/scenario/load", scenario_load, methods=["POST"]),
        Route("/_sim/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/devicecodes/{code}/approve", device_approve, methods=["POST"]),
    ]
