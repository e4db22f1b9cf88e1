"""Browser sign-in through a loopback redirect URI: relay365 listens for the answer itself.

``http://localhost`` (or ``http://127.0.0.1``) registered without a port lets the answer
come back to any port (RFC 8252), so relay365 listens on a free one, opens the sign-in
page, and receives the authorization code as the browser's POST (``form_post``) or GET.
Nobody copies a code or a token by hand.  The browser gets a short page saying who
signed in, or what went wrong with its cause and its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import urllib.parse
import webbrowser
from collections.abc import Callable

from ..errors import AuthError, ConfigError, Relay365Error
from ._connection import Connection, SignInFlow
from ._scopes import SignInResult

logger = logging.getLogger("relay365.auth")

_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_MAX_BODY = 256 * 1024
_READ_TIMEOUT = 30.0


def loopback_address(redirect_uri: str) -> tuple[str, int, str]:
    """(host, port, path) to listen on for ``redirect_uri``; port 0 means any free port."""
    parts = urllib.parse.urlsplit(redirect_uri)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS:
        raise ConfigError(
            f"redirect_uri {redirect_uri!r} is not a loopback address (http://localhost or "
            "http://127.0.0.1), so relay365 cannot receive the sign-in itself here: sign in "
            "through relay365's web page, or paste the address the browser lands on")
    return str(parts.hostname), parts.port or 0, parts.path


async def sign_in_with_browser(connection: Connection, *, on_url: Callable[[str], None],
                               open_browser: bool = True, timeout: float = 300) -> SignInResult:
    """Sign ``connection`` in through the browser, receiving the answer on a loopback port.

    ``on_url`` gets the sign-in address (to print it: the browser may be elsewhere);
    the browser is opened on it when ``open_browser``.  AuthError when the sign-in fails
    or no answer comes within ``timeout`` seconds.
    """
    host, port, path = loopback_address(connection.settings.redirect_uri)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[SignInResult] = loop.create_future()
    receiver = _Receiver(connection, path or "/", outcome)
    bind = "::1" if host == "::1" else "127.0.0.1"
    try:
        servers = [await asyncio.start_server(receiver.handle, bind, port)]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {bind} port {port} for the sign-in answer of connection "
                          f"{connection.name!r} ({exc.strerror}): another program uses it; register "
                          "http://localhost (no port) as redirect URI to let relay365 pick a free "
                          "port") from exc
    port = servers[0].sockets[0].getsockname()[1]
    if host == "localhost":  # browsers may try ::1 first for "localhost"
        with contextlib.suppress(OSError):
            servers.append(await asyncio.start_server(receiver.handle, "::1", port))
    try:
        url_host = f"[{host}]" if ":" in host else host
        receiver.flow = await connection.start_sign_in(f"http://{url_host}:{port}{path}")
        on_url(receiver.flow.auth_uri)
        if open_browser:
            await asyncio.to_thread(webbrowser.open, receiver.flow.auth_uri)
        try:
            return await asyncio.wait_for(outcome, timeout)
        except TimeoutError:
            raise AuthError(f"no sign-in answer reached relay365 within {timeout:g} seconds for "
                            f"connection {connection.name!r}: finish the sign-in in the browser "
                            "sooner, or run it again", code="timeout") from None
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        if not outcome.done():
            outcome.cancel()


class _Receiver:
    """Answers the browser's requests to the redirect URI; the first valid answer wins."""

    def __init__(self, connection: Connection, path: str, outcome: asyncio.Future[SignInResult]) -> None:
        self.connection = connection
        self.path = path
        self.outcome = outcome
        self.flow: SignInFlow | None = None
        self.claimed = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), _READ_TIMEOUT)
            if request is None:
                await _respond(writer, 400, _page("Bad request", "<p>This request could not be read.</p>"))
                return
            status, page, settle = await self._answer(*request)
            await _respond(writer, status, page)
            if settle is not None:
                settle()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the browser went away; the sign-in keeps waiting
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, method: str, target: str, body: bytes
                      ) -> tuple[int, str, Callable[[], None] | None]:
        path, _, query = target.partition("?")
        if path != self.path:
            return 404, _page("Not found", "<p>This is relay365's sign-in receiver.</p>"), None
        if method == "GET":
            params = dict(urllib.parse.parse_qsl(query))
        elif method == "POST":
            params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        else:
            return 405, _page("Not allowed", "<p>Only GET and POST are answered here.</p>"), None
        flow = self.flow
        if flow is None or not (params.get("code") or params.get("error")):
            return 400, _page("No sign-in answer", "<p>This address receives the answer of a "
                              "relay365 sign-in, and this request carries none.</p>"), None
        if params.get("state") != flow.state:
            return 400, _page("Not this sign-in", "<p>This answer does not belong to the sign-in "
                              "relay365 is waiting for. Use the address relay365 printed.</p>"), None
        if self.claimed:
            return 409, _page("Already finished", "<p>This sign-in has already been completed. "
                              "You can close this window.</p>"), None
        self.claimed = True
        name = html.escape(self.connection.name)
        try:
            result = await self.connection.finish_sign_in(flow, params)
        except Relay365Error as exc:
            error = exc
            return 200, _failure_page(name, error), lambda: _settle_error(self.outcome, error)
        except Exception as exc:  # a bug: the waiting caller must hear of it, not time out
            unexpected = exc
            return 500, _page("Sign-in failed", "<p class=\"err\">relay365 failed unexpectedly; "
                              "see its log.</p>"), lambda: _settle_error(self.outcome, unexpected)
        return 200, _success_page(name, result), lambda: _settle(self.outcome, result)


def _settle(outcome: asyncio.Future[SignInResult], result: SignInResult) -> None:
    if not outcome.done():
        outcome.set_result(result)


def _settle_error(outcome: asyncio.Future[SignInResult], error: Exception) -> None:
    if not outcome.done():
        outcome.set_exception(error)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3:
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return None
    if not 0 <= length <= _MAX_BODY:
        return None
    body = await reader.readexactly(length) if length else b""
    return request_line[0].upper(), request_line[1], body


async def _respond(writer: asyncio.StreamWriter, status: int, page: str) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              409: "Conflict", 500: "Internal Server Error"}.get(status, "OK")
    body = page.encode("utf-8")
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
                 f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                 "Referrer-Policy: no-referrer\r\nConnection: close\r\n\r\n".encode("ascii") + body)
    await writer.drain()


def _page(title: str, content: str) -> str:
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>relay365: {html.escape(title)}</title><style>body{{font-family:system-ui,"
            "sans-serif;max-width:40em;margin:3em auto;line-height:1.5}}.warn{{color:#8a5300}}"
            f".err{{color:#a4262c}}</style></head><body><h1>{html.escape(title)}</h1>{content}"
            "</body></html>")


def _success_page(name: str, result: SignInResult) -> str:
    who = html.escape(result.account or "the app")
    content = f"<p>Connection <b>{name}</b> is signed in as <b>{who}</b>.</p>"
    if result.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
        content += f"<p class=\"warn\">But check this:</p><ul class=\"warn\">{items}</ul>"
    content += "<p>You can close this window and go back to relay365.</p>"
    return _page("Signed in", content)


def _failure_page(name: str, error: Relay365Error) -> str:
    code = f" [{html.escape(error.code)}]" if error.code else ""
    content = (f"<p class=\"err\">Connection <b>{name}</b> is not signed in: "
               f"{html.escape(error.message)}{code}</p>"
               f"<p><b>{html.escape(error.entry.id)}: {html.escape(error.entry.title)}</b></p>"
               f"<p><b>Cause:</b> {html.escape(error.cause)}</p>"
               f"<p><b>Fix:</b> {html.escape(error.fix)}</p>")
    return _page("Sign-in failed", content)
