"""``python -m orchestration.cli``."""

from orchestration.cli.commands import main

main()
