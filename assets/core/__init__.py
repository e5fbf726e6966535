"""What every room of assets/ shares: settings (without Dagster), storage, feeds, contracts,
resources, partitions, automation, the dbt project and the training launcher. Rank 0: imports
no other room."""
