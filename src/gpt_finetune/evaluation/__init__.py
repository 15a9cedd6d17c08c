"""Generated responses, reports and judges."""
