"""lm_eval's command line with the `gpt-finetune` model registered (lm_eval 0.4 finds models only by import).

`python -m gpt_finetune.evaluation.lm_eval_cli --model gpt-finetune --model_args run_dir=RUN --tasks arc_easy`
takes every argument `lm_eval` takes.
"""

from __future__ import annotations

from lm_eval.__main__ import cli_evaluate

import gpt_finetune.evaluation.lm_eval_adapter  # noqa: F401  (registers the model)


def main() -> None:
    """Run lm_eval's CLI on `sys.argv`."""
    cli_evaluate()


if __name__ == "__main__":
    main()
