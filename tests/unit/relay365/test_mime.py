"""relay365.mime: heads read once and edited as bytes, with CRLF or bare LF line ends."""

from __future__ import annotations

import pytest

from relay365 import mime

CRLF = (b"From: \"Doe, Jane\" <Jane@Contoso.com>\r\nTo: a@example.com,\r\n b@example.com\r\n"
        b"Bcc: hidden@example.com\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n\r\nFrom: not a header\r\n")
LF = CRLF.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("raw", [CRLF, LF], ids=["crlf", "lf"])
def test_a_head_is_read_once_whatever_the_line_ends(raw: bytes) -> None:
    head = mime.read_head(raw)
    assert head.eol == (b"\r\n" if raw is CRLF else b"\n")
    assert head.from_address == "Jane@Contoso.com"
    assert head.addresses("To", "Cc", "Bcc") == ["a@example.com", "b@example.com", "hidden@example.com"]
    assert head.subject == "Café"
    assert raw[head.end:].startswith(head.eol + b"From: not a header")
    assert mime.split_head(raw) == (raw[:head.end], raw[head.end:])
    assert head.missing_recipients(["A@example.com", "new@example.org", "NEW@example.org"]) == [
        "new@example.org"]


@pytest.mark.parametrize("raw", [CRLF, LF], ids=["crlf", "lf"])
def test_edits_keep_the_line_ends_and_the_body(raw: bytes) -> None:
    head = mime.read_head(raw)
    eol = head.eol
    body = raw[head.end:]
    rewritten = mime.with_from(raw, head, "info@contoso.com", "Contoso Info")
    assert rewritten.startswith(b"From: Contoso Info <info@contoso.com>" + eol + b"To: a@example.com,")
    assert rewritten.endswith(body) and rewritten.count(b"From: ") == 2  # the body's line stays
    assert mime.read_head(rewritten).get_all("From") == ["Contoso Info <info@contoso.com>"]

    bcc = mime.with_bcc(raw, head, ["x@example.org", "y@example.org"])
    assert b"Bcc: hidden@example.com," + eol + b" x@example.org," + eol + b" y@example.org" + eol in bcc
    assert bcc.endswith(body)
    assert mime.with_bcc(raw, head, []) is raw

    stripped = mime.without_fields(raw, head, "bcc")
    assert b"Bcc" not in stripped[:head.end] and stripped.endswith(body)
    assert mime.without_fields(raw, head, "X-None") is raw


def test_fields_are_added_where_a_head_has_no_blank_line_or_no_last_line_break() -> None:
    just_text = b"just text\r\n"
    assert mime.with_fields(just_text, mime.read_head(just_text), [("From", "a@b.c")]) == (
        b"From: a@b.c\r\n\r\njust text\r\n")
    unfinished = b"Subject: x"
    assert mime.with_fields(unfinished, mime.read_head(unfinished), [("From", "a@b.c")]) == (
        b"Subject: x\r\nFrom: a@b.c\r\n\r\n")
    assert mime.with_bcc(unfinished, mime.read_head(unfinished), ["n@m.example"]) == (
        b"Subject: x\r\nBcc: n@m.example\r\n\r\n")


def test_an_address_that_would_break_a_field_is_refused() -> None:
    head = mime.read_head(CRLF)
    for bad in ("x@y.example\r\nX-Evil: 1", "a b@example.com", "<a@example.com>", "no-at-sign"):
        assert not mime.is_plain_address(bad)
        with pytest.raises(ValueError, match="cannot be written"):
            mime.with_bcc(CRLF, head, [bad])
        with pytest.raises(ValueError, match="cannot be written"):
            mime.with_from(CRLF, head, bad)


def test_newlines_are_made_crlf() -> None:
    assert mime.normalise_newlines(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"
    assert mime.has_bare_newline(b"a\nb") and not mime.has_bare_newline(b"a\r\nb")
    already = b"a\r\n"
    assert mime.normalise_newlines(already) is already
