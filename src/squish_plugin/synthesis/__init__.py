"""The method: SquishedNets' evolutionary synthesis, and the faces it wears.

- :mod:`.genetics` — the genetic encoding, the environmental factor, the seeded draw
  (pure maths on cluster strengths; no torch-pruning).
- :mod:`.resources` — what a network costs (parameters, MACs) as a polynomial of its
  kept fractions, and the budget calibration.
- :mod:`.surgery` — the one door to torch-pruning: clusters, physical removal, rollback.
- :mod:`.pruner` — :class:`EvolutionarySynthesisPruner`, the torch-pruning face.
- :mod:`.nni` — the NNI 3 face (needs the ``nni`` extra; imported only when asked for).
"""

from .genetics import SynthesisConfig, derive_seed
from .pruner import EvolutionarySynthesisPruner
from .surgery import model_stats

__all__ = ["EvolutionarySynthesisPruner", "SynthesisConfig", "derive_seed", "model_stats"]
