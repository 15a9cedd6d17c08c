"""LightningModules: instruction tuning and classification."""
