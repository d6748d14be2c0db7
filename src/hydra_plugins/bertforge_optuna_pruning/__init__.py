"""bertforge's Hydra sweeper `optuna_pruning`: Hydra's Optuna sweeper plus trial pruning."""
