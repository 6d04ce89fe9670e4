"""fidobook: attribution masks (FIDO with concrete and simplified concrete dropout) and
Over-MAP confidence for fine-grained image classification — the package behind the book."""
from . import data, models, parts, plots
from .data import CUB, PART_NAMES, generate, load_tensors, render_bird
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
    stable_sigmoid,
)
from .models import SmallCNN, TrainConfig, evaluate, mc_dropout, predict, resnet, train_classifier
from .parts import PART_LABELS, class_table, discriminative_parts, error_parts, part_mass
from .profiles import PROFILES, Profile, get_profile
from .workflow import data_dir, load_split, prepare_classifier, prepare_data

__version__ = "0.1.0"

__all__ = [
    "FIDO", "FIDOConfig", "FIDOResult", "frozen_model", "log_odds", "total_variation",
    "INFILLS", "RANDOM_INFILLS", "blur_sigma", "infill",
    "SAMPLERS", "ConcreteDropout", "MaskSampler", "SimplifiedConcreteDropout", "get_sampler",
    "logistic_noise", "open_uniform", "stable_sigmoid",
    "data", "models", "CUB", "PART_NAMES", "generate", "load_tensors", "render_bird",
    "SmallCNN", "TrainConfig", "evaluate", "mc_dropout", "predict", "resnet", "train_classifier",
    "PROFILES", "Profile", "get_profile",
    "parts", "plots", "PART_LABELS", "class_table", "discriminative_parts", "error_parts", "part_mass",
    "data_dir", "load_split", "prepare_classifier", "prepare_data",
]
