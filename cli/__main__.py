"""`python -m cli`: the `appliance` command."""

from cli import main

main()
