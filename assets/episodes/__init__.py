"""Raw tables -> decision episodes and datasets: the dbt assets, the dataset exports and checks,
dataset lineage and the plain-Python references (oracles). Rank 2."""
