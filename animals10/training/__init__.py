"""Training with Ray Train: the configuration and recipes (config), the training step in plain PyTorch
(engine), what each worker runs (worker) and the driver (driver)."""
