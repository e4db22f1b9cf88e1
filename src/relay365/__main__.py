"""``python -m relay365``: the relay365 command."""

from .cli import main

main()
