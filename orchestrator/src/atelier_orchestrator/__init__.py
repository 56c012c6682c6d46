"""Atelier orchestrator: owns each job's stage graph and moves jobs from stage to stage."""
