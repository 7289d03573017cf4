"""`python -m services.guardrails` = `forge serve guardrails`."""

import sys

from services.cli.main import main

if __name__ == "__main__":
    main(["serve", "guardrails", *sys.argv[1:]])
