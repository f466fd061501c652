"""The reference Socket.IO server (system under test). Usable on its own; imports nothing of the lab."""

from .app import LabServer
from .settings import PROFILES, Settings, SettingsError, Toggles, build_settings

__all__ = ["PROFILES", "LabServer", "Settings", "SettingsError", "Toggles", "build_settings"]
