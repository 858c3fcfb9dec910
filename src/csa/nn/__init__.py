"""Network building blocks: the CSA layer, the generator, the discriminators, VGG16.

Nothing here imports from the rest of the package above ``csa.errors`` / ``csa.config``.
"""
from .attention import CoherentSemanticAttention, check_known_positions, feature_mask
from .discriminators import FeatureDiscriminator, PatchDiscriminator
from .generator import CSAGenerator, GeneratorOutput, RefineUNet, RoughUNet, build_generator, init_weights

__all__ = [
    "CoherentSemanticAttention",
    "CSAGenerator",
    "FeatureDiscriminator",
    "GeneratorOutput",
    "PatchDiscriminator",
    "RefineUNet",
    "RoughUNet",
    "build_generator",
    "check_known_positions",
    "feature_mask",
    "init_weights",
]
