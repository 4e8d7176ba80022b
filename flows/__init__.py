"""Prefect flows. Importing this package sets Prefect defaults for local runs (ephemeral, no analytics)."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if os.environ.get("PREFECT_HOME"):  # Prefect creates only the last level of a missing home folder
    os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sip")
# The temporary server takes ~20 s to start on 2 busy cores; Prefect's default wait is too short there.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
