"""The environment variables bulkexport reads, named once (every reader imports them here)."""

from __future__ import annotations

__all__ = [
    "API_KEY", "API_KEY_FILE", "CATALOG_URI", "CONFIG", "ENDPOINT", "LOG_FORMAT", "LOG_LEVEL", "PURE_PYTHON",
    "STATE_DIR",
]  # fmt: skip

API_KEY = "BRAZE_API_KEY"  # the REST API key (never a flag: flags land in shell history)
API_KEY_FILE = "BRAZE_API_KEY_FILE"  # a file holding it, for secret managers that mount files
ENDPOINT = "BRAZE_REST_ENDPOINT"  # the workspace's REST endpoint
CONFIG = "BULKEXPORT_CONFIG"  # a TOML file of settings
LOG_LEVEL = "BULKEXPORT_LOG_LEVEL"
LOG_FORMAT = "BULKEXPORT_LOG_FORMAT"
STATE_DIR = "BULKEXPORT_STATE_DIR"  # local run state for object-store outputs
CATALOG_URI = "BULKEXPORT_CATALOG_URI"  # an Iceberg catalog URI (it may hold a password)
PURE_PYTHON = "BULKEXPORT_PURE_PYTHON"  # set: the flattener skips its C loop (tests, debugging)
