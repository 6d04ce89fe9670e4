"""fidobook: attribution masks (FIDO with concrete and simplified concrete dropout) and
Over-MAP confidence for fine-grained image classification — the package behind the book."""
from .fido import FIDO, FIDOConfig, FIDOResult, frozen_model, log_odds, total_variation
from .infill import INFILLS, RANDOM_INFILLS, blur_sigma, infill
from .samplers import (
    SAMPLERS,
    ConcreteDropout,
    MaskSampler,
    SimplifiedConcreteDropout,
    get_sampler,
    logistic_noise,
    open_uniform,
)

__version__ = "0.1.0"

__all__ = [
    "FIDO", "FIDOConfig", "FIDOResult", "frozen_model", "log_odds", "total_variation",
    "INFILLS", "RANDOM_INFILLS", "blur_sigma", "infill",
    "SAMPLERS", "ConcreteDropout", "MaskSampler", "SimplifiedConcreteDropout", "get_sampler",
    "logistic_noise", "open_uniform",
]
