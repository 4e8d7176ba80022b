"""Prefect flows. Importing this package sets Prefect defaults for local runs (ephemeral, no analytics)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sip")
