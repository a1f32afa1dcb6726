"""Hardware profiles for Park et al.'s roofline model (METHODS.md 4b): achievable FLOP/s ``F``,
bandwidth ``B``, the sparse kernel's compute overhead ``alpha`` and its bytes per nonzero relative
to a dense weight ``beta``.

    profile = get_profile("h100")                  # built-in, cited figures
    profile = get_profile("cpu")                   # measured on this machine (a few seconds, cached)
    profile = HardwareProfile.load("h100_calibrated.json")   # from `calibrate(...).save(path)`

Built-ins (``source`` says where each number comes from):
  * ``h100``: F = median effective dense rate of cuDNN (TF32) over the batch-32 conv layers of
    ``device-baselines.md`` (measured 2026-11-22, CUDA-graph timing), see ``H100_CUDNN_TF32_B32``;
    B = 3.0 TB/s, the bandwidth limit used there (datasheet: 3.35 TB/s HBM3, H100 SXM5 80GB);
    alpha = 8, METHODS 4b's estimate for a CUDA-core kernel against TF32 tensor cores, until
    ``calibrate("cuda")`` measures it.
  * ``a100``: datasheet (A100 SXM4 80GB): 156 TF/s dense TF32, 2.039 TB/s HBM2e; alpha = 8 [I].
    Not measured: calibrate on the device before trusting predictions.
  * ``bdw``, ``atom``: Park et al. Table 1 platforms (SGEMM GF/s, STREAM GB/s, alpha), for checks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
from pathlib import Path
from typing import Any

from sparse_lightning.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    """One device, as Park's model sees it.

    Args:
        name: short name (``"h100"``, ``"cpu"``, ...).
        flops: F, achievable dense FLOP/s (the dense baseline's actual throughput).
        bandwidth: B, achievable memory bandwidth in bytes/s (copy or STREAM).
        alpha: sparse compute overhead: F / (the sparse kernel's FLOP/s counted on nonzeros).
        beta: bytes the sparse format moves per nonzero, relative to a dense weight (CSR fp32: 2).
        peak_flops: datasheet peak FLOP/s, for reference only (0 when unknown).
        latency_s: fixed time per kernel call added to predicted dense and sparse times (launch,
            tail). It does not change the useful range.
        source: where the numbers come from.
    """

    name: str
    flops: float
    bandwidth: float
    alpha: float
    beta: float = 2.0
    peak_flops: float = 0.0
    latency_s: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("flops", "bandwidth", "alpha", "beta"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"HardwareProfile.{key} must be a number > 0, got {value!r}")
        if self.latency_s < 0:
            raise ConfigError(f"HardwareProfile.latency_s must be >= 0, got {self.latency_s!r}")

    @property
    def balance(self) -> float:
        """Machine balance F / B in FLOP per byte."""
        return self.flops / self.bandwidth

    def replace(self, **changes: Any) -> HardwareProfile:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareProfile:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"measurements"})
        if unknown:
            raise ConfigError(f"hardware profile: unknown keys {unknown}; allowed: {', '.join(sorted(fields))}")
        return cls(**{k: v for k, v in data.items() if k in fields})

    def save(self, path: str | Path, measurements: dict[str, Any] | None = None) -> Path:
        """Write the profile (and optionally the raw measurements behind it) as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if measurements:
            data["measurements"] = measurements
        path.write_text(json.dumps(data, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> HardwareProfile:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"hardware profile {path}: {exc}") from None
        return cls.from_dict(data)


# device-baselines.md, "Dense convolution", batch 32: (layer, GFLOP, cuDNN TF32 us).
H100_CUDNN_TF32_B32 = (
    ("alexnet.conv2", 28.67, 108.3), ("alexnet.conv3", 9.57, 58.6), ("alexnet.conv4", 14.35, 80.3),
    ("alexnet.conv5", 9.57, 56.1), ("resnet50.l2.3x3", 7.40, 55.3), ("resnet50.l3.3x3", 7.40, 43.9),
    ("resnet50.l4.3x3", 7.40, 59.0), ("vgg16.conv4_2", 118.38, 382.1),
)


def h100_cudnn_tf32_rate() -> float:
    """Median effective FLOP/s of the batch-32 cuDNN TF32 rows of device-baselines.md (~1.7e14)."""
    return statistics.median(g * 1e9 / (us * 1e-6) for _, g, us in H100_CUDNN_TF32_B32)


BUILTIN = {
    "h100": lambda: HardwareProfile(
        "h100", flops=h100_cudnn_tf32_rate(), bandwidth=3.0e12, alpha=8.0, beta=2.0, peak_flops=494.7e12,
        source="F: median cuDNN TF32 rate, batch-32 convs of device-baselines.md (H100 80GB HBM3, "
               "2026-11-22); B: 3.0 TB/s limit of device-baselines.md (datasheet 3.35 TB/s); "
               "alpha: METHODS 4b estimate (>= 8 vs tensor cores), not measured; peak: datasheet TF32 dense"),
    "a100": lambda: HardwareProfile(
        "a100", flops=156e12, bandwidth=2.039e12, alpha=8.0, beta=2.0, peak_flops=156e12,
        source="A100 SXM4 80GB datasheet: 156 TF/s dense TF32, 2.039 TB/s; alpha: METHODS 4b estimate; "
               "not measured"),
    "bdw": lambda: HardwareProfile(
        "bdw", flops=2150e9, bandwidth=122e9, alpha=3.0, beta=2.0,
        source="Park et al. 2017 Table 1: Xeon E5-2697 v4, SGEMM 2150 GF/s, STREAM 122 GB/s, alpha 3"),
    "atom": lambda: HardwareProfile(
        "atom", flops=62e9, bandwidth=15e9, alpha=1.2, beta=2.0,
        source="Park et al. 2017 Table 1: Atom C2750, SGEMM 62 GF/s, STREAM 15 GB/s, alpha 1.2"),
}


@functools.cache
def _measured_cpu() -> HardwareProfile:
    from sparse_lightning.perf.calibrate import calibrate

    return calibrate("cpu", quick=True).profile


def get_profile(spec: str | HardwareProfile) -> HardwareProfile:
    """A built-in by name (``h100``, ``a100``, ``bdw``, ``atom``, ``cpu``: measured here once per
    process), or a profile JSON path."""
    if isinstance(spec, HardwareProfile):
        return spec
    key = str(spec).lower()
    if key == "cpu":
        return _measured_cpu()
    if key in BUILTIN:
        return BUILTIN[key]()
    if key.endswith(".json"):
        return HardwareProfile.load(spec)
    raise ConfigError(f"profile: unknown {spec!r}; use one of {', '.join([*BUILTIN, 'cpu'])} or a .json path")
