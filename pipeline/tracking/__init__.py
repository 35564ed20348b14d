"""The one door to MLflow: the store and its client (`store`), sweep and retrain runs and logged
models (`runs`), the batched per-trial writer (`trials`), and MLflow's own programs (`server`)."""
