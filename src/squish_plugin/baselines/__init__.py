"""The baselines: classic pruners on an evolutionary run's own schedule.

- :mod:`.pruners` — NNI L1/L2/FPGM/Taylor and torch-pruning magnitude/random, each
  pruning a copy of a network to a parameter count.
- :mod:`.recipe` — the ``compare`` recipe.
- :mod:`.protocol` — ``squish-plugin compare``: the equal-budget protocol, its table,
  CSV and plot.
"""
