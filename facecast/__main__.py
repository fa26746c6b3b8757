"""`python -m facecast` runs the command-line interface."""

import sys

from facecast.cli import main

sys.exit(main())
