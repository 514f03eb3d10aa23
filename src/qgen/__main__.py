"""``python -m qgen`` runs the command line."""

from qgen.cli import main

main()
