"""The `logger` config group's code: Lightning's loggers built from `conf/logger/`, the names and stores their
configs resolve to, and what a run records in them beside Lightning's metrics (config, sweep table, files)."""
