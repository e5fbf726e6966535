"""Landed files -> validated raw tables: readers, landing, the ingestion core, the raw
contracts and the raw assets. Rank 1: imports only assets.core."""
