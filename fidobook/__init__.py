"""fidobook: attribution masks (FIDO with concrete and simplified concrete dropout) and
Over-MAP confidence for fine-grained image classification — the package behind the book."""
from . import (attribution, cam, data, enhance, experiments, metrics, models, overmap, parts, plots,
               segmentation, stats, study)
from .attribution import ATTRIBUTIONS, get_attribution
from .cam import attention_maps, cbam_attention, grad_cam
from .data import CUB, HARD_CASES, PART_NAMES, generate, load_tensors, make_hard_set, render_bird
from .enhance import crop_boxes, mask_boxes, random_boxes_like
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
from .metrics import (curve_auc, deletion_curve, insertion_curve, map_iou, mass_outside, normalize_maps,
                      normalized_tv, pointing_game, relevance_mass, relevance_rank, score_maps)
from .models import (SegConfig, SegNet, SmallCNN, TrainConfig, evaluate, mc_dropout, predict, resnet,
                     train_classifier, train_segmenter)
from .overmap import (augrc, aurc, e_aurc, max_softmax, mc_dropout_probs, mc_dropout_scores,
                      negative_entropy, overlap_iou, overlap_mass, rejection_table, risk_coverage,
                      topk_correct)
from .parts import PART_LABELS, class_table, discriminative_parts, error_parts, part_mass
from .profiles import PROFILES, Profile, get_profile
from .segmentation import Segmentation, guided_segmentation, segment
from .study import fit_cached, model_digest
from .workflow import (data_dir, load_split, prepare_classifier, prepare_data, prepare_hard_set,
                       prepare_segmenter)

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
    "data_dir", "load_split", "prepare_classifier", "prepare_data", "prepare_hard_set",
    "prepare_segmenter",
    "cam", "attention_maps", "cbam_attention", "grad_cam",
    "attribution", "ATTRIBUTIONS", "get_attribution", "experiments",
    "enhance", "crop_boxes", "mask_boxes", "random_boxes_like",
    "HARD_CASES", "make_hard_set",
    "metrics", "curve_auc", "deletion_curve", "insertion_curve", "map_iou", "mass_outside",
    "normalize_maps", "normalized_tv", "pointing_game", "relevance_mass", "relevance_rank", "score_maps",
    "overmap", "augrc", "aurc", "e_aurc", "max_softmax", "mc_dropout_probs", "mc_dropout_scores",
    "negative_entropy", "overlap_iou", "overlap_mass", "rejection_table", "risk_coverage", "topk_correct",
    "segmentation", "Segmentation", "guided_segmentation", "segment", "SegConfig", "SegNet",
    "train_segmenter",
    "stats", "study", "fit_cached", "model_digest",
]
