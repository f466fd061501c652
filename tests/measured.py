"""What a measured run's manifest records that simulated stand-ins for measured runs need."""

from __future__ import annotations

# the server settings a measured run's manifest records (the server's defaults); calibration reads them
SERVER_SETTINGS = {
    "flush_interval_ms": 100.0,
    "batch_size": 50,
    "heartbeat_s": 25.0,
    "ping_timeout_s": 20.0,
    "max_connections": 2000,
    "max_per_company": 500,
}
