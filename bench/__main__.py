"""``python -m bench`` (from the repository root): see bench/harness.py."""

import sys

from bench.harness import main

sys.exit(main())
