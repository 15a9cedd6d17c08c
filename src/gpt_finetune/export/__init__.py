"""`python export.py`: a Hugging Face directory, or a GGUF file and an ollama Modelfile (see `command`)."""

from gpt_finetune.export.command import main

__all__ = ["main"]
