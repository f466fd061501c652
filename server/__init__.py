"""The reference Socket.IO server (system under test). Usable on its own; imports nothing of the lab.

``LabServer`` is imported lazily so that ``python -m server users`` stays quick.
"""

from .settings import PROFILES, Settings, SettingsError, Toggles, build_settings

__all__ = ["PROFILES", "LabServer", "Settings", "SettingsError", "Toggles", "build_settings"]


def __getattr__(name: str):
    if name == "LabServer":
        from .app import LabServer

        return LabServer
    raise AttributeError(name)
