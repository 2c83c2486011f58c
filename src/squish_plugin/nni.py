"""``squish_plugin.nni``: the NNI face, at the import path the README shows (it lives in
:mod:`squish_plugin.synthesis.nni`). Needs the ``nni`` extra."""

from .synthesis.nni import EvolutionarySynthesisPruner, apply_masks, masks_to_plan

__all__ = ["EvolutionarySynthesisPruner", "apply_masks", "masks_to_plan"]
