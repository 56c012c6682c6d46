"""Provenance of delivered assets: the invisible watermark codec (:mod:`.watermark`), C2PA manifests
(:mod:`.manifests`: sign and read) and verifying a file found in the wild (:mod:`.verify`)."""
