"""A faithful simulator of the Vobiz CDR API (see ``harvester.sim.server``)."""

from harvester.sim.data import Dataset
from harvester.sim.server import SimConfig, Simulator

__all__ = ["Dataset", "SimConfig", "Simulator"]
