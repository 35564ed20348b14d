"""The plain core: data and its split, the networks, training, scores and decisions. Neither
Ray nor MLflow, so it runs and is tested in milliseconds, and the retrain reuses it."""
