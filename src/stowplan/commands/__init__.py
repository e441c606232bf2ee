"""One module per ``stowplan`` subcommand, loaded lazily by :mod:`stowplan.cli` (thin shells:
parse flags, call the library, print)."""
