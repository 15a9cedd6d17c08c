"""Every Lightning callback the configs in `conf/callbacks/` list: checkpointing, the loss guard, the SIGTERM
deadline, generated text (validation samples, test responses) and test predictions."""
