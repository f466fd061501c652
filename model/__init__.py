"""SimPy model of the server, its calibration from event logs, validation, and scalability fits.

Never imports ``server`` or ``loadgen``: it learns the server only through event logs.
"""

from .parameters import Calibration, GcModel
from .replications import confidence, replicate, simulate
from .sim import Simulation
from .workload import StepW, Workload

__all__ = ["Calibration", "GcModel", "Simulation", "StepW", "Workload", "confidence", "replicate", "simulate"]
