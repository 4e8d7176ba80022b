"""Thin Prefect tasks around sip_core: retries, caching, run ids. No domain logic here."""
