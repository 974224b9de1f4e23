"""``python -m SegGradCAMLib ...``: the ``seggradcam`` command line, as the worker process of
the 3D Slicer module and the web viewer runs it (``PythonSlicer -m SegGradCAMLib explain ...``)."""

import sys

from .cli import main

sys.exit(main())
