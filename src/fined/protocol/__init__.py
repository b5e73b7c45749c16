"""The continual protocol: period-by-period training, strategies against forgetting, results."""
