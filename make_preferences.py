"""Make DPO preference pairs with a judge model: `python make_preferences.py data.path=FILE judge=ollama`."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.make_preferences import main as make_preferences_main
from gpt_finetune.renames import refuse_renamed_keys


@hydra.main(version_base="1.3", config_path="conf", config_name="make_preferences")
def main(cfg: DictConfig) -> None:
    make_preferences_main(cfg)


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    main()
