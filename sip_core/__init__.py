"""sip_core: the pure library behind sip (no Prefect imports here; flows/ and tasks/ wrap it)."""

__version__ = "0.1.0"
