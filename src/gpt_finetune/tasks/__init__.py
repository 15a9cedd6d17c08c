"""LightningModules on one base (base.py): instruction tuning and classification."""
