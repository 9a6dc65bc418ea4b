"""Experiments: each registered with a config dataclass and run by ``unbottleneck run NAME``."""

from .runner import REGISTRY, ConfigError, RunContext, get_experiment, register, run_experiment

_MODULES = ("iat_fit", "iat_memorize", "iat_points", "iat_transfer", "iat_ablation", "iat_classify", "multimodal", "transformer_ffn", "mnist_bottleneck", "lm", "lm_robustness", "lm_compare",
            "lm_stability")


def load_all() -> None:
    """Import every experiment module so that it registers itself."""
    import importlib

    for name in _MODULES:
        importlib.import_module(f"{__name__}.{name}")


__all__ = ["REGISTRY", "ConfigError", "RunContext", "get_experiment", "load_all", "register", "run_experiment"]
