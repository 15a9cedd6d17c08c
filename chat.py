"""Talk to a trained run: `python chat.py run_dir=RUN` (or `prompt="..."` to answer once)."""

import sys

import hydra
from omegaconf import DictConfig

from gpt_finetune.chat import main as chat_main
from gpt_finetune.predict import literal_text_argv
from gpt_finetune.renames import refuse_renamed_keys


@hydra.main(version_base="1.3", config_path="conf", config_name="chat")
def main(cfg: DictConfig) -> None:
    chat_main(cfg)


if __name__ == "__main__":
    refuse_renamed_keys(sys.argv[1:])
    sys.argv = literal_text_argv(sys.argv, "prompt", "system")  # taken verbatim, whatever they hold
    main()
