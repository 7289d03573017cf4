"""`python -m services.cli ...` = `forge ...`."""

from services.cli.main import main

if __name__ == "__main__":
    main()
