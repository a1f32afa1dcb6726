"""Park et al.'s performance model: hardware profiles, per-layer roofline and useful sparsity
range, and on-device calibration (``calibrate`` is imported lazily: it times kernels)."""

from sparse_lightning.perf.model import (
    LayerCost,
    UsefulRange,
    layer_costs,
    model_speedup,
    speedup,
    t_dense,
    t_sparse,
    useful_range,
)
from sparse_lightning.perf.profiles import HardwareProfile, get_profile

__all__ = ["HardwareProfile", "LayerCost", "UsefulRange", "get_profile", "layer_costs", "model_speedup",
           "speedup", "t_dense", "t_sparse", "useful_range"]
