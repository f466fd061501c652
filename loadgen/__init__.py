"""Open-loop load generator speaking Engine.IO v4 / Socket.IO v5 over websockets."""

from .connection import Connection, ConnectRefused
from .launch import read_tokens, run_load
from .scrape import Scraper
from .spec import LoadSpec, Step
from .worker import Worker

__all__ = ["ConnectRefused", "Connection", "LoadSpec", "Scraper", "Step", "Worker", "read_tokens", "run_load"]
