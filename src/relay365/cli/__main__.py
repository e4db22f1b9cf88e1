"""``python -m relay365.cli``: the ``relay365`` command."""

from . import main

main()
