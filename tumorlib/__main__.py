"""``python -m tumorlib`` runs the command line."""

import sys

from tumorlib.app.cli import main

sys.exit(main())
