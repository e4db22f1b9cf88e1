"""The ``relay365`` command: set up, sign in, send, and try it all on the emulator.

Every command is a thin shell over the async core; failures print their cause and fix
(from the catalogue) and exit non-zero, never a traceback.  ``_common`` holds the Typer
app and what the commands share; each other module registers its commands on that app
when imported, in the order ``relay365 --help`` lists them.  The parts a command drives
load inside it, so that ``relay365 --help`` and ``relay365 sendmail`` stay quick.
"""

import sys
from pathlib import Path

from ._common import app

# Each module registers its commands on `app` as it is imported: this order is --help's.
# isort: off
from . import _setup, _send, _serve, _queue, _access, _config, _diagnose, _integrations  # noqa: F401
# isort: on


def main() -> None:
    """The console entry point (``relay365``, or a ``sendmail`` symlink to it)."""
    # `relay365 sendmail` takes sendmail's own flags (-oi, -fSENDER, -FName), which a
    # Typer command would mangle, and is also reached through a `sendmail` symlink.
    invoked_as = Path(sys.argv[0]).name
    if invoked_as == "sendmail" or sys.argv[1:2] == ["sendmail"]:
        from ..ingress import sendmail_command

        args = sys.argv[1:] if invoked_as == "sendmail" else sys.argv[2:]
        raise SystemExit(sendmail_command(args))
    app()


__all__ = ["app", "main"]
