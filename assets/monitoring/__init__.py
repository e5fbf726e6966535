"""Monitoring: drift of the market against what the champion learned (the feature_drift asset
over pure drift statistics). Rank 4, the top of assets/."""
