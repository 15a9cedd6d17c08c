"""Export a trained run: `python export.py run_dir=RUN format=hf|gguf out=DIR`."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.export import main as export_main
from gpt_finetune.renames import refuse_renamed_keys


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    export_main(cfg)


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    main()
