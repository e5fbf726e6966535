"""The first day of the platform's calendar, without Dagster (the ingestion needs it too).

Daily and monthly partitions start here; rows dated before it are quarantined with the reason
``before the first partition`` in the first day's quarantine file, never dropped."""

HISTORY_START = "2000-01-01"
