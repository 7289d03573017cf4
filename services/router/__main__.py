"""`python -m services.router` = `forge serve router`."""

import sys

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "router", *sys.argv[1:]])
