"""relay365's use of aiosmtpd beyond its public hooks (ingress/_aiosmtpd.py): pinned, checked, equivalent.

The first tests fail on an aiosmtpd upgrade that changes anything ``RelaySMTP`` relies on;
the fix is to review ``_aiosmtpd.py`` against the new source, then update the pin in
pyproject.toml, ``AIOSMTPD_VERSION`` and the digests in ``RELIES_ON``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import random
import textwrap
import tomllib
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from relay365.ingress import RelayHandler, RelaySMTP
from relay365.ingress._aiosmtpd import _AIOSMTPD_SIZE_REFUSAL, AIOSMTPD_VERSION, RELIES_ON, source_digest
from relay365.ingress._data import read_data


def _pyproject() -> Path:
    return next(p / "pyproject.toml" for p in Path(__file__).parents if (p / "pyproject.toml").is_file())


def test_aiosmtpd_is_pinned_to_the_version_relay365_was_written_against() -> None:
    dependencies = tomllib.loads(_pyproject().read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if d.startswith("aiosmtpd")]
    assert pins == [f"aiosmtpd=={AIOSMTPD_VERSION}"]
    assert importlib.metadata.version("aiosmtpd") == AIOSMTPD_VERSION


@pytest.mark.parametrize("member", sorted(RELIES_ON))
def test_the_aiosmtpd_members_relied_on_are_unchanged(member: str) -> None:
    assert source_digest(member) == RELIES_ON[member], (
        f"aiosmtpd's {member} changed: review relay365/ingress/_aiosmtpd.py against it")


@pytest.mark.parametrize("name", ["smtp_DATA", "push", "_create_envelope"])
def test_overrides_keep_aiosmtpd_s_signatures(name: str) -> None:
    ours = inspect.signature(getattr(RelaySMTP, name))
    theirs = inspect.signature(getattr(SMTP, name))
    assert list(ours.parameters) == list(theirs.parameters)
    assert inspect.iscoroutinefunction(getattr(RelaySMTP, name)) == inspect.iscoroutinefunction(
        getattr(SMTP, name))


def test_the_reply_text_push_replaces_is_aiosmtpd_s() -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(SMTP.smtp_MAIL)))
    texts = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert _AIOSMTPD_SIZE_REFUSAL in texts


def test_the_command_and_auth_tables_are_aiosmtpd_s_own() -> None:
    """RelaySMTP lists only the smtp_* and auth_* names to dir(): the tables are still all of them."""
    async def tables() -> None:
        handler = RelayHandler.__new__(RelayHandler)
        server = RelaySMTP(handler, hostname="test", loop=asyncio.get_running_loop())
        every = object.__dir__(server)
        assert set(server._smtp_methods) == {n[5:] for n in every if n.startswith("smtp_")}
        assert server._smtp_methods["DATA"].__func__ is RelaySMTP.smtp_DATA
        assert sorted(server._auth_methods) == ["LOGIN", "PLAIN"]
        assert not any(m.is_builtin for m in server._auth_methods.values())  # the handler's own
        assert set(server._handle_hooks) >= {"EHLO", "MAIL", "RCPT", "DATA", "AUTH", "exception"}

    asyncio.run(tables())


# -- reading DATA in chunks ------------------------------------------------------------------------


def reference_data(stream: bytes) -> tuple[bytes, bytes] | None:
    """aiosmtpd 1.4.6's reading of DATA, a line at a time: (message, what follows) or None."""
    lines, start = [], 0
    while (end := stream.find(b"\r\n", start)) != -1:
        line, start = stream[start:end + 2], end + 2
        if line == b".\r\n":
            return b"".join(lines), stream[start:]
        lines.append(line[1:] if line.startswith(b".") else line)
    return None


def test_reading_data_in_chunks_gives_what_aiosmtpd_gives() -> None:
    """Random streams of CR, LF, dots and letters, fed in random pieces to a reader whose limit is
    tiny (so that it is overrun often): the same message, the same rest, the same size verdict."""
    rng = random.Random(1)

    async def read(stream: bytes, pieces: list[int], limit: int | None) -> tuple[bytes | None, bytes]:
        reader = asyncio.StreamReader(limit=8)
        task = asyncio.ensure_future(read_data(reader, limit))
        start = 0
        for size in [*pieces, len(stream)]:
            reader.feed_data(stream[start:start + size])
            start += size
            await asyncio.sleep(0)
        reader.feed_eof()
        return await task, await reader.read()

    async def check() -> None:
        for _ in range(2000):
            stream = bytes(rng.choice(b"\r\n.a") for _ in range(rng.randrange(0, 40))) + b"\r\n.\r\nQUIT\r\n"
            pieces = [rng.randrange(1, 6) for _ in range(rng.randrange(0, 12))]
            expected = reference_data(stream)
            assert expected is not None
            assert await read(stream, pieces, None) == expected, (stream, pieces)
            size_limit = rng.randrange(1, 40)
            data, rest = await read(stream, pieces, size_limit)
            assert rest == expected[1]
            # The limit counts the bytes as sent, dot-stuffing included, as aiosmtpd does.
            sent = len(stream) - len(expected[1]) - 3
            assert data == (expected[0] if sent <= size_limit else None), (stream, size_limit)

    asyncio.run(check())


def test_reading_data_that_the_client_never_ends_raises_incomplete_read() -> None:
    async def read() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"Subject: x\r\n\r\nno end")
        reader.feed_eof()
        await read_data(reader, None)

    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(read())
