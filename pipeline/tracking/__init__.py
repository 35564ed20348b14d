"""The one door to MLflow. From the bottom up: the checks a store must pass before anything
starts (`preflight`), MLflow's own programs (`server`) and the model server (`scoring`), the store
and its client (`store`), a sweep's runs (`runs`) and the cross-machine lock (`locks`); the
batched per-trial writer (`trials`), interrupted sweeps (`resume`), sweeps read back (`sweeps`),
nights' runs (`night_runs`); the retrain run and its logged model (`models`); the model registry
(`registry`)."""
