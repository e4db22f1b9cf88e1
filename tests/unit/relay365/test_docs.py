"""docs/: the generated references match the code, and every link between the pages resolves."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from relay365 import cli
from relay365.catalogue import catalogue
from relay365.config import (
    AdminSettings,
    AlertSettings,
    ApiKey,
    ClientUser,
    ConnectionSettings,
    DeliverySettings,
    RelaySettings,
    Settings,
    SmtpListener,
)
from relay365.integrations import docs

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_committed_references_are_up_to_date() -> None:
    assert docs.DOCS_DIR == DOCS
    old = [str(p.relative_to(ROOT)) for p in docs.stale(cli.app, DOCS)]
    assert not old, f"out of date: {old}; run `relay365 docs generate`"


def test_the_references_cover_every_key_command_and_entry() -> None:
    configuration = (DOCS / "reference" / "configuration.md").read_text()
    for model in (Settings, ConnectionSettings, RelaySettings, SmtpListener, ClientUser, ApiKey,
                  DeliverySettings, AlertSettings, AdminSettings):
        for name in model.model_fields:
            assert f"| `{name}` |" in configuration, f"{model.__name__}.{name}"
    reference = (DOCS / "reference" / "cli.md").read_text()
    root = typer.main.get_command(cli.app)
    context = typer.Context(root, info_name="relay365")
    for name in root.list_commands(context):
        assert f"## relay365 {name}\n" in reference, name
    assert "## relay365 sendmail\n" in reference and "## relay365 queue retry\n" in reference
    assert "`--all-failed`" in reference
    troubleshooting = (DOCS / "troubleshooting.md").read_text()
    for entry in catalogue().values():
        assert f"### {entry.id}: {entry.title}\n" in troubleshooting


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        found.add(text.replace(" ", "-"))
    return found


def test_every_link_between_pages_resolves() -> None:
    pages = sorted(DOCS.rglob("*.md"))
    assert {p.name for p in pages} >= {"README.md", "guide.md", "wordpress.md", "deploy.md", "python.md",
                                       "troubleshooting.md", "configuration.md", "cli.md"}
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
            if anchor and file.suffix == ".md":
                where = page.relative_to(ROOT)
                assert anchor in anchors(file.read_text()), f"{where}: no #{anchor} in {path}"


def test_the_dockerfile_copies_what_exists_and_checks_health() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert "USER relay365" in dockerfile and "/healthz" in dockerfile
    assert 'CMD ["serve", "--log-format", "json"]' in dockerfile
