"""The ``stella`` command line: Stella from a terminal, through the public HTTP API only."""
