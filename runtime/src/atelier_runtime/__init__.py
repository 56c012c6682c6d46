"""What every Atelier process runs on: settings (:mod:`.settings`), the Celery app and its routing
(:mod:`.celeryapp`), the stage runner (:mod:`.stage_runner`), object storage (:mod:`.storage`), runtime state
in Redis (:mod:`.state`) and image encoding (:mod:`.images`)."""
