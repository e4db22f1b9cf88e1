"""``relay365 serve``: the relay in the foreground."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..config import config_path
from ._common import ConfigOption, app, out, run, settings


@app.command("serve")
def serve_command(
    config: ConfigOption = None,
    log_format: Annotated[str, typer.Option(help="text | json")] = "text",
    grace: Annotated[float, typer.Option(help="seconds deliveries in flight get at shutdown")] = 30.0,
) -> None:
    """Run the relay: SMTP listener(s), HTTP API and delivery workers."""
    from ..log_format import configure_logging
    from ..serve import serve

    current = settings(config)
    configure_logging(log_format)

    def ready(info: dict[str, Any]) -> None:
        import json

        out.print("READY " + json.dumps(info), markup=False, highlight=False, soft_wrap=True)

    run(serve(current, grace=grace, on_ready=ready, config_file=config_path(config)))

