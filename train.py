"""Fine-tune GPT-2: `python train.py [experiment=quickstart] [model=gpt2-medium] [key=value ...]`."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.config import register_resolvers
from gpt_finetune.renames import refuse_renamed_keys
from gpt_finetune.train import main as run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_main(cfg)


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    register_resolvers()  # the sweep folder's name uses ${short_name:...}
    main()
