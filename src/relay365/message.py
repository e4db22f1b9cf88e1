"""Building messages from command-line parts, and reading .eml files."""

from __future__ import annotations

import mimetypes
from email.message import EmailMessage
from pathlib import Path

from .errors import ConfigError


def build_message(*, sender: str | None, to: list[str], cc: list[str], bcc: list[str], subject: str,
                  text: str | None, html: str | None, attachments: list[Path]) -> EmailMessage:
    """An EmailMessage with text and/or HTML bodies and file attachments."""
    if not (to or cc or bcc):
        raise ConfigError("give at least one recipient (--to, --cc or --bcc)")
    msg = EmailMessage()
    if sender:
        msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    msg["Subject"] = subject
    msg.set_content(text if text is not None else ("" if html else "\n"))
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for path in attachments:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read attachment {path}: {exc.strerror}") from exc
        ctype, _ = mimetypes.guess_type(path.name)
        maintype, _, subtype = (ctype or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=path.name)
    return msg


def read_eml(path: Path) -> bytes:
    """The bytes of an .eml file, to be sent as they are (not parsed and written again)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
