"""Reading the catalogue and finding the entry for a code or a pasted error text."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

KINDS = ("transient", "permanent", "config", "auth")


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    cause: str
    fix: str
    kind: str
    link: str
    keys: tuple[str, ...] = ()


@cache
def catalogue() -> dict[str, Entry]:
    text = (resources.files("relay365.diagnose") / "catalogue.toml").read_text(encoding="utf-8")
    out: dict[str, Entry] = {}
    for raw in tomllib.loads(text)["entry"]:
        entry = Entry(id=raw["id"], title=raw["title"], cause=raw["cause"].strip(),
                      fix=raw["fix"].strip(), kind=raw["kind"], link=raw.get("link", ""),
                      keys=tuple(raw.get("keys", ())))
        if entry.id in out:
            raise ValueError(f"catalogue.toml: duplicate id {entry.id}")
        out[entry.id] = entry
    return out


def lookup_entry(entry: Entry | str) -> Entry:
    """The entry with this id (an unknown id is a bug: it names the internal entry)."""
    if isinstance(entry, Entry):
        return entry
    return catalogue().get(entry) or catalogue()["R365-INTERNAL"]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def find_entry(*texts: str | int | None) -> Entry | None:
    """The most specific entry whose key appears in any of ``texts``.

    Keys are codes (``AADSTS7000222``, ``ErrorSendAsDenied``, ``5.7.139``) or distinctive
    phrases; the longest matching key wins, so "535 5.7.139 ... security defaults" finds
    the security-defaults entry rather than the generic 5.7.139 one.
    """
    haystack = " | ".join(_normalise(str(t)) for t in texts if t is not None and str(t))
    if not haystack:
        return None
    best: tuple[int, Entry] | None = None
    for entry in catalogue().values():
        for key in entry.keys:
            k = _normalise(key)
            if k and k in haystack and (best is None or len(k) > best[0]):
                best = (len(k), entry)
    return best[1] if best else None
