"""Evaluate a finished run: `python evaluate.py run_dir=outputs/runs/<run> [judge=ollama|openai] [k=v]`."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.evaluate import main as evaluate_main
from gpt_finetune.renames import refuse_renamed_keys


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate_main(cfg)


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    main()
