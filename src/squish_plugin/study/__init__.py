"""The study: everything between a recipe and a run directory.

- :mod:`.recipe` — YAML recipes, validated, with ``--set`` overrides.
- :mod:`.data`, :mod:`.imagenet10` — image folders decoded once into cached arrays; the
  paper's ImageNet-10 carved out of a local ILSVRC-2012.
- :mod:`.training` — seeded training (distillation, DDP) and evaluation loops.
- :mod:`.engine` — :func:`evolve`, the generation loop with lineage, checkpoints, resume.
- :mod:`.runner` — ``squish-plugin run``: a recipe's whole study.
- :mod:`.report`, :mod:`.plots` — Table 2, generation tables, figures.
- :mod:`.distributed` — torchrun / DistributedDataParallel support.
"""
