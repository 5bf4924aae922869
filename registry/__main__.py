"""``python -m engine.registry serve|gc ...``."""

import sys

from .server import main

sys.exit(main())
