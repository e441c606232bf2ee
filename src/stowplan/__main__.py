"""``python -m stowplan`` runs the command line (see :mod:`stowplan.cli`)."""

from stowplan.cli import main

main()
