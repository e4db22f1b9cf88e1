"""Reading SMTP DATA from a stream in large chunks: the message as aiosmtpd 1.4.6 would give it.

aiosmtpd 1.4.6 reads one line per ``readuntil(b"\\r\\n")`` into a list of bytearrays and
joins them: ~5x the message in memory at the peak, and most of the CPU of a session.
``read_data`` reads up to the first ``<CR><LF>.<CR><LF>`` (the CRLF that ended the DATA
command counts, so ``.<CR><LF>`` right after the 354 is an empty message) into one BytesIO,
leaves what follows in the reader for the next (pipelined) command, and removes the
dot-stuffing in place.  The message is the same bytes aiosmtpd would give: lines are
CRLF-terminated, a line that starts with a dot loses that dot, and a ``<LF>.<LF>`` or any
bare CR or LF is data (the handler refuses it).  One thing differs: no line is too long
(only the size limit holds), where aiosmtpd refuses a line over its ``line_length_limit``.

Only asyncio here; the aiosmtpd protocol that calls it is in ``_aiosmtpd.py``.
"""

from __future__ import annotations

import asyncio
import io
import re

_END = b"\r\n.\r\n"
_STUFFED = re.compile(rb"\r\n\.")
_END_PREFIXES = tuple((n, _END[:n]) for n in range(len(_END) - 1, 0, -1))


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytes | None:
    """The message, up to the ``.<CR><LF>`` that ends it, dot-stuffing removed; None when it
    is larger than ``limit`` bytes as sent (then read to its end and discarded).

    The chunks go into a BytesIO, whose buffer is a bytes object that grows in place and
    that ``getvalue`` returns without a copy: the message is in memory once, not twice.
    Raises ``asyncio.IncompleteReadError`` when the stream ends before the data does.
    """
    data = io.BytesIO()
    received = 0
    too_much = False
    # The last bytes read, to find an end that spans two reads; the CRLF that ended the
    # DATA command to begin with.
    tail = b"\r\n"
    while True:
        partial = _end_prefix(tail)
        if partial:
            # The end may be the next 5 - partial bytes, and cannot end any sooner:
            # reading exactly those never takes a byte of the next command.
            chunk = await reader.readexactly(len(_END) - partial)
        else:
            try:
                # No end starts in what was read: the first in the stream is the one.
                chunk = await reader.readuntil(_END)
            except asyncio.LimitOverrunError as exc:
                # Not in the reader's first ``limit`` bytes: no end starts in the first
                # ``consumed`` ones (or the end starts right there); take those.
                chunk = await reader.readexactly(exc.consumed)
        received += len(chunk)
        window = tail + chunk[-len(_END):]
        done = window.endswith(_END)
        tail = window[-(len(_END) - 1):]
        # Before the end, up to 2 bytes of what was read (".\r") may be the end's.
        if limit and not too_much and received - (3 if done else 2) > limit:
            too_much = True
            data = io.BytesIO()  # let go of it at once; read on to the end
        if not too_much:
            data.write(chunk)
        if done:
            if too_much:
                return None
            # Without the final ".\r\n": its CRLF ends the message's last line.
            return _unstuffed(data, data.tell() - 3)


def _end_prefix(tail: bytes) -> int:
    """How many bytes at the end of ``tail`` could begin ``<CR><LF>.<CR><LF>`` (0 to 4)."""
    for n, prefix in _END_PREFIXES:
        if tail.endswith(prefix):
            return n
    return 0


def _unstuffed(data: io.BytesIO, size: int) -> bytes:
    """The first ``size`` bytes of ``data`` without the first dot of every line that starts
    with one (RFC 5321 4.5.2): moved within ``data``'s buffer, which is then returned."""
    with data.getbuffer() as view:
        read = 1 if size and view[0] == ord(".") else 0
        found = _STUFFED.search(view, read, size)  # the end's dot (at ``size``) is left out
        if read or found is not None:
            write = 0
            while found is not None:
                keep = found.start() + 2  # through the CRLF; the dot after it goes
                view[write:write + keep - read] = view[read:keep]  # a memmove: overlap is fine
                write += keep - read
                read = keep + 1
                found = _STUFFED.search(view, read, size)
            view[write:write + size - read] = view[read:size]
            size = write + size - read
    data.truncate(size)
    return data.getvalue()
