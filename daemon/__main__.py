"""``python -m daemon`` is ``provisiond``."""

from daemon.cli import main

main()
