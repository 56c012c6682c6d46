"""Identity: offline face detection, face embeddings, and the identity score of ID-Aligner's reward.

``faces`` finds faces (OpenCV's Haar cascade, evaluated in numpy), ``embedder`` turns a face crop into an
L2-normalised vector (an ArcFace-style model from ``ATELIER_IDENTITY_EMBEDDER_PATH``), ``score`` compares
every character of a scene with its character sheet; ``tiny`` writes a small TorchScript stand-in embedder
(tests, tiny InstantID weights). The InstantID conditioning that tries to make scenes pass lives in
``atelier_gpu.recipes.identity``; the gate stage in ``atelier_gpu.identity_tasks``.
"""
