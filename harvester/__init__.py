"""vobiz-harvester: bulk-harvest Vobiz call detail records into Hive-partitioned Parquet."""

__version__ = "0.1.0"
