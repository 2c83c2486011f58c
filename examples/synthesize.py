"""Three generations of evolutionary synthesis on the pretrained SqueezeNet-10 ancestor.

Run:  python examples/synthesize.py
No training happens here: it shows the size trajectory of env=0.9 offspring and
that every child still runs. `squish-plugin run` adds training between generations.
"""

import torch

from squish_plugin import (
    IMAGENETTE_WNIDS,
    EvolutionarySynthesisPruner,
    load_pruned,
    model_stats,
    save_pruned,
    squeezenet1_1_ancestor,
)

model = squeezenet1_1_ancestor(num_classes=10, weights="imagenet", head=IMAGENETTE_WNIDS)
pruner = EvolutionarySynthesisPruner(model, env=0.9, seed=0)
stats = model_stats(model)
print(f"ancestor      params={stats['params']:>8,}  size={stats['size_mb']:.2f} MB  MACs={stats['macs'] / 1e6:.0f}M")
for generation in range(1, 4):
    child = pruner.step()
    stats = model_stats(child)
    size, macs = stats["size_mb"], stats["macs"] / 1e6
    print(f"generation {generation:2d} params={stats['params']:>8,}  size={size:.2f} MB  MACs={macs:.0f}M")
save_pruned(child, "runs/gen03.pt")  # runs/ is created if missing
again = load_pruned("runs/gen03.pt")
print("runs/gen03.pt reloaded, output", tuple(again(torch.zeros(1, 3, 224, 224)).shape))
