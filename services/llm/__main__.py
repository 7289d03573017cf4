"""`python -m services.llm` = `forge serve llm`."""

import sys

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "llm", *sys.argv[1:]])
