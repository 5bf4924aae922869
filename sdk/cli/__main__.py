"""``python -m engine.sdk.cli``: run the ``engine`` command line."""
import sys

from engine.sdk.cli import main

if __name__ == "__main__":
    sys.exit(main())
