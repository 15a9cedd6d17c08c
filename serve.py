"""Serve a trained run over an OpenAI-compatible HTTP API: `python serve.py run_dir=RUN [port=8000]`."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.renames import refuse_renamed_keys
from gpt_finetune.serve import main as serve_main


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    serve_main(cfg)


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    main()
