"""``python -m harvester`` is the ``vobiz-harvest`` command."""

import sys

from harvester.cli import main

sys.exit(main())
