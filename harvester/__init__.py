"""vobiz-harvester: bulk-harvest Vobiz call detail records into Hive-partitioned Parquet.

The public Python API (everything else is private and may change)::

    from harvester import HarvestConfig, harvest

    report = harvest(HarvestConfig(base_url=..., auth_id=..., auth_token=..., out="lake",
                                   start_date=day, end_date=day, today=today))
    report["exit_code"]    # 0 complete, 1 incomplete, 2-4 an error (see harvester.errors)

``harvest_async`` is the same inside a running event loop; ``Simulator`` serves the
simulated Vobiz API (for notebooks and tests); ``HarvestError`` is the base of every error.
"""

__version__ = "0.1.0"

from harvester.config import HarvestConfig
from harvester.errors import HarvestError
from harvester.harvest.run import Report, harvest_async
from harvester.harvest.run import run_harvest as harvest
from harvester.sim import Dataset, SimConfig, Simulator

__all__ = [
    "Dataset",
    "HarvestConfig",
    "HarvestError",
    "Report",
    "SimConfig",
    "Simulator",
    "__version__",
    "harvest",
    "harvest_async",
]
