"""Hyperparameter tuning of PyTorch networks: Ray Tune + HyperOpt TPE + ASHA + MLflow."""
