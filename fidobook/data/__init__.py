"""Data: the synthetic fine-grained birds (:mod:`.birds`), their hard test cases (:mod:`.hard`)
and a reader of CUB-200-2011's on-disk format (:mod:`.cub`), which serves both the real
CUB-200-2011 and the generated birds."""
from .birds import (
    COLOURS,
    FORMAT_VERSION,
    N_VARIANTS,
    PART_NAMES,
    PART_TYPES,
    VARIANT_NAMES,
    RenderedBird,
    class_distances,
    class_name,
    class_parts,
    generate,
    part_differences,
    read_class_parts,
    render_bird,
    variant_gallery,
)
from .cub import CUB, load_tensors
from .hard import CORRUPTIONS, HARD_CASES, default_per_case, make_hard_set, novel_combinations

__all__ = [
    "CUB", "load_tensors",
    "COLOURS", "FORMAT_VERSION", "N_VARIANTS", "PART_NAMES", "PART_TYPES", "VARIANT_NAMES",
    "RenderedBird", "class_distances", "class_name", "class_parts", "generate",
    "part_differences", "read_class_parts", "render_bird", "variant_gallery",
    "CORRUPTIONS", "HARD_CASES", "default_per_case", "make_hard_set", "novel_combinations",
]
