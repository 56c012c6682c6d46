"""The GPU stages, one file each, named after the stage (``gpu.background`` → ``background.py``)."""
