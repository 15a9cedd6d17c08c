"""Preference pairs made with a judge model (`make_preferences.py`): prompts, progress file, the two modes."""
