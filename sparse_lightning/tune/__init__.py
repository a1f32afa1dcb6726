"""Ray Tune searches over the hyperparameters of a ``sparse-train`` config (``sparse-tune``).

Needs the ``[tune]`` extra (Ray). Not imported by ``import sparse_lightning``.
"""
