"""Cluster and storage resources: local compute, SLURM submission, artifact storage.

Submodules are imported directly (``resources.storage`` is plain Python that workers use without
loading Dagster; ``resources.compute`` holds the Dagster resources).
"""
