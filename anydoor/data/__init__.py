"""AnyDoor data pipeline: high-frequency map, pair preparation, data sets, synthetic data."""
