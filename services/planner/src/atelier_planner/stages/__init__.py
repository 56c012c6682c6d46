"""The planning stages, one file each, named after the stage (``plan.ad_layout`` → ``ad_layout.py``)."""
