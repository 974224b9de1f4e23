"""``python -m SegGradCAMLib.cli``: the ``seggradcam`` command line."""

import sys

from . import main

sys.exit(main())
