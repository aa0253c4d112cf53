"""``python -m vla_ros.serve``: the same as ``vla-ros serve``."""

import sys

from .cli import main

sys.exit(main())
