"""Classifiers for fidobook: a small CNN with CBAM, torchvision ResNets, and their training loop.

Every model takes ``Tensor[N, 3, H, W]`` in [0, 1] (normalisation is inside), returns logits
``Tensor[N, K]``, and exposes ``cam_layer`` (the layer Grad-CAM reads) and ``cbam_modules``.
:class:`SegNet` is the small object segmenter (logits ``Tensor[N, 1, H, W]``) Over-MAP uses.
"""
from .cbam import CBAM, ChannelAttention, SpatialAttention
from .cnn import IMAGENET_MEAN, IMAGENET_STD, Normalize, SmallCNN, dropout_layers, mc_dropout
from .resnet import RESNETS, LoadReport, ResNet, load_weights, resnet
from .segnet import (SegConfig, SegNet, as_masks, load_cached_segmenter, load_segmenter, mask_iou,
                     predict_masks, save_segmenter, segmenter_cache_key, segmenter_path,
                     train_segmenter)
from .train import (ARCHS, Evaluation, TrainConfig, augment, build_model, cache_key, checkpoint_path,
                    load_cached_classifier,
                    data_fingerprint, evaluate, load_checkpoint, predict, save_checkpoint,
                    train_classifier)

__all__ = [
    "CBAM", "ChannelAttention", "SpatialAttention",
    "IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "SmallCNN", "dropout_layers", "mc_dropout",
    "RESNETS", "LoadReport", "ResNet", "load_weights", "resnet",
    "SegConfig", "SegNet", "as_masks", "load_cached_segmenter", "load_segmenter", "mask_iou",
    "predict_masks", "save_segmenter", "segmenter_cache_key", "segmenter_path", "train_segmenter",
    "ARCHS", "Evaluation", "TrainConfig", "augment", "build_model", "cache_key", "checkpoint_path",
    "load_cached_classifier",
    "data_fingerprint", "evaluate", "load_checkpoint", "predict", "save_checkpoint",
    "train_classifier",
]
