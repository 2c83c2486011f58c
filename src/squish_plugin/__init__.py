"""squish-plugin: evolutionary synthesis (SquishedNets) for PyTorch, torch-pruning and NNI.

Example:
    >>> from squish_plugin import EvolutionarySynthesisPruner, squeezenet1_1_ancestor
    >>> model = squeezenet1_1_ancestor(num_classes=10, weights="imagenet")
    >>> child = EvolutionarySynthesisPruner(model, env=0.9).step()
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import CheckpointError, InvalidArgumentError, MissingExtraError, SquishError, UntraceableModelError
from .models import IMAGENET10_WNIDS, IMAGENETTE_WNIDS, imagenet_classes, imagenet_index, squeezenet1_1_ancestor
from .persistence import load_pruned, save_pruned
from .study.engine import EvolutionConfig, GenerationContext, Lineage, evolve
from .synthesis import EvolutionarySynthesisPruner, SynthesisConfig, model_stats
from .synthesis.strengths import DataStrengths

try:
    __version__ = version("squish-plugin")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "IMAGENET10_WNIDS",
    "IMAGENETTE_WNIDS",
    "CheckpointError",
    "DataStrengths",
    "EvolutionConfig",
    "EvolutionarySynthesisPruner",
    "GenerationContext",
    "Lineage",
    "InvalidArgumentError",
    "MissingExtraError",
    "SquishError",
    "SynthesisConfig",
    "UntraceableModelError",
    "__version__",
    "evolve",
    "imagenet_classes",
    "imagenet_index",
    "load_pruned",
    "model_stats",
    "save_pruned",
    "squeezenet1_1_ancestor",
]
