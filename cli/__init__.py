"""Command-line entry points: the ``plant`` CLI, the dev runner and the embedded services."""
