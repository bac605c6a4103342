"""``python -m robopol`` is the ``robopol`` command."""

from robopol.cli import main

main()
