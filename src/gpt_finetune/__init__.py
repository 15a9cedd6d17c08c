"""Fine-tune GPT-2 to follow instructions or classify text, with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
