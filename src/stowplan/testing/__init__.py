"""Helpers shared by the test suites (tests cannot import each other): problem builders and
hypothesis strategies. Imported by tests only; needs the ``dev`` extra (hypothesis)."""
