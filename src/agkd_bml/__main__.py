"""``python -m agkd_bml`` (also the entry point for ``torchrun -m agkd_bml``)."""

import sys

from agkd_bml.cli import main

sys.exit(main())
