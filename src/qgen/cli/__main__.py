"""``python -m qgen.cli`` runs the command line."""

from qgen.cli import main

main()
