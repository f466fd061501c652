"""SimPy model of the server, its calibration from event logs, validation, and scalability fits.

Never imports ``server`` or ``loadgen``: it learns the server only through event logs.
"""

from .executor import DaskExecutor, Executor, LocalExecutor, using
from .parameters import Calibration, GcModel
from .replications import Point, Replicas, confidence, replicate, replicate_points, simulate
from .sim import Simulation
from .workload import StepW, Workload

__all__ = [
    "Calibration",
    "DaskExecutor",
    "Executor",
    "GcModel",
    "LocalExecutor",
    "Point",
    "Replicas",
    "Simulation",
    "StepW",
    "Workload",
    "confidence",
    "replicate",
    "replicate_points",
    "simulate",
    "using",
]
