"""`python -m helexa` runs the same command line as the `helexa` executable."""

from helexa.cli import main

main()
