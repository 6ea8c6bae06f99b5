"""`python -m ray_app.cli` runs the `prism` command line."""

from ray_app.cli import main

main()
