"""Fine-tune GPT-2: `python train.py [experiment=quickstart] [model=gpt2-medium] [key=value ...]`."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.renames import renamed_override_error
from gpt_finetune.train import main as run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_main(cfg)


if __name__ == "__main__":
    renamed = renamed_override_error(sys.argv[1:])  # before Hydra, whose message for it is many lines
    if renamed is not None:
        print(f"error: {renamed}", file=sys.stderr)
        sys.exit(2)
    main()
