"""Benchmarks run with `python -m gpt_finetune.benchmarks.<name>`; they print tables, never assert timings."""
