"""`python -m facecast.bench` runs the benchmarks (same as `facecast bench`)."""

import sys

from facecast.cli.bench import main

sys.exit(main())
