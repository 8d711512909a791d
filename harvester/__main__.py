"""``python -m harvester`` is the ``vobiz-harvest`` command."""

import sys

from harvester.cli.main import main

sys.exit(main())
