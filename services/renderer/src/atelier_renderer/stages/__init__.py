"""The render stages, one file each, named after the stage (``render.ad`` → ``render_ad.py``)."""
