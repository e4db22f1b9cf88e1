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
    # Texts that name this entry only when they are the whole text: the seed's bare
    # "Not Found" or "Forbidden", which as substrings would match far too much.
    exact: tuple[str, ...] = ()


@dataclass(frozen=True)
class Match:
    """An entry found for a text, and the key that found it."""

    entry: Entry
    key: str


@cache
def catalogue() -> dict[str, Entry]:
    text = (resources.files("relay365.catalogue") / "catalogue.toml").read_text(encoding="utf-8")
    out: dict[str, Entry] = {}
    for raw in tomllib.loads(text)["entry"]:
        entry = Entry(id=raw["id"], title=raw["title"], cause=raw["cause"].strip(),
                      fix=raw["fix"].strip(), kind=raw["kind"], link=raw.get("link", ""),
                      keys=tuple(raw.get("keys", ())), exact=tuple(raw.get("exact", ())))
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


def match_entry(*texts: str | int | None) -> Match | None:
    """Like ``find_entry``, with the key that matched (``relay365 explain`` shows it)."""
    parts = [_normalise(str(t)) for t in texts if t is not None and str(t).strip()]
    if not parts:
        return None
    by_id = {p.upper(): p for p in parts}
    for entry in catalogue().values():  # an entry's own id names it
        if entry.id in by_id:
            return Match(entry, entry.id)
    haystack = " | ".join(parts)
    best: Match | None = None
    for entry in catalogue().values():
        for key in entry.keys:
            k = _normalise(key)
            if k and k in haystack and (best is None or len(k) > len(best.key)):
                best = Match(entry, key)
    if best is None:
        for entry in catalogue().values():
            for key in entry.exact:
                if _normalise(key) in parts:
                    return Match(entry, key)
    return best


def find_entry(*texts: str | int | None) -> Entry | None:
    """The most specific entry whose key appears in any of ``texts``.

    Keys are codes (``AADSTS7000222``, ``ErrorSendAsDenied``, ``5.7.139``) or distinctive
    phrases; the longest matching key wins, so "535 5.7.139 ... security defaults" finds
    the security-defaults entry rather than the generic 5.7.139 one.  A text that is an
    entry's id, or one of its ``exact`` texts as a whole, names that entry.
    """
    found = match_entry(*texts)
    return found.entry if found else None
