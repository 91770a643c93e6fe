"""Run the CLI: ``python -m stella.cli`` (the ``stella`` console script)."""

from __future__ import annotations

from stella.cli.app import main

if __name__ == "__main__":
    main()
