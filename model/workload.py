"""The load the model is driven with: the run contract's :class:`~eventlog.load.Load`, nothing added.

The model never imports ``loadgen``; it reads the ``load`` a measured run's manifest holds
(:meth:`Workload.from_manifest`), or the lab passes the same fields from a scenario.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict

from eventlog.load import Load, Step


class Workload(Load):
    """A :class:`~eventlog.load.Load` that ignores fields only the generator or a scenario uses
    (url, workers, ...), so a measured run's load drives the model as it is."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def from_manifest(cls, manifest: Any) -> Workload:
        """The load a run was recorded with (a :class:`~eventlog.manifest.Manifest` or its dict).

        Runs written before the load carried its companies recorded them beside it, as
        ``users: {companies, per_company}``; those are read too."""
        from eventlog.manifest import Manifest

        return cls.model_validate(Manifest.of(manifest).offered_load().model_dump())


StepW = Step  # the model's step is the contract's step
