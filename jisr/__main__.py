"""``python -m jisr`` is the ``jisr`` command."""

from jisr.cli import main

main()
