"""What chat.py and serve.py share: loading a run or base model, rendering conversations, streaming."""
