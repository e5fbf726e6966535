"""The live path: websocket collector, replay server, simulator and their wire format. Rank 1:
imports only assets.core; nothing here imports Dagster."""
