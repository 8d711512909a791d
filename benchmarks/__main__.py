import sys

from benchmarks import partner
from benchmarks.run import main

sys.exit(main(more={"partner": partner.run}))
