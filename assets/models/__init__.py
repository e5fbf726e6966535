"""Datasets -> models: the training assets, evaluation and promotion. Rank 3."""
