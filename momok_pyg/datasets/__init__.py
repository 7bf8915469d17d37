from .schema import (ENTITY, REL, SPLITS, STRUCTURE, MMKGFormatError, build_mmkg, get_triples,
                     set_triples, feature_modalities, modality_features, modality_masks, summary)

__all__ = [
    "ENTITY", "REL", "SPLITS", "STRUCTURE", "MMKGFormatError", "build_mmkg", "get_triples",
    "set_triples", "feature_modalities", "modality_features", "modality_masks", "summary",
]
