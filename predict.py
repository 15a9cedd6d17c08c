"""Classify texts with a trained run: `python predict.py run_dir=RUN text="..."` (or file=PATH)."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.predict import literal_text_argv
from gpt_finetune.predict import main as predict_main
from gpt_finetune.renames import refuse_renamed_keys


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict_main(cfg)


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    sys.argv = literal_text_argv(sys.argv)  # the text is taken verbatim, whatever characters it holds
    main()
