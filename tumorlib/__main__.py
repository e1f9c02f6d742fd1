"""``python -m tumorlib`` runs the command line."""

import sys

from tumorlib.cli import main

sys.exit(main())
