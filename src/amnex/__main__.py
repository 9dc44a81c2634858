"""Entry point: `python -m amnex` is the `amnex` command."""

from amnex.cli import main

main()
