"""`python -m services.embed` = `forge serve embed`."""

import sys

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "embed", *sys.argv[1:]])
