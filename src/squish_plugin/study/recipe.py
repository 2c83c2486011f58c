"""Study recipes: YAML validated by a typed schema, ``--set a.b=c`` overrides.

Every error is one sentence naming the key path and what is allowed.

Example:
    >>> from squish_plugin.study.recipe import Recipe
    >>> Recipe.model_validate({"name": "demo", "data": {"root": "data"}}).evolution.env
    0.9
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .recipe_yaml import RecipeError, apply_overrides, read_yaml

__all__ = [
    "NAME_PATTERN",
    "FinishSection",
    "OutputSection",
    "ParameterCounts",
    "Recipe",
    "RecipeError",
    "RecipeSection",
    "apply_overrides",
    "load_recipe",
    "read_yaml",
    "recipe_sentence",
    "resolve_paths",
    "validate_recipe",
]


#: what a recipe's ``name`` may be: it names the run folders.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _parameter_counts(v: list[int]) -> list[int]:
    if any(x < 1 for x in v):
        raise ValueError("must be positive parameter counts")
    return sorted(set(v), reverse=True)


#: parameter counts (``extra_params``): positive, each once, largest first
ParameterCounts = Annotated[list[int], AfterValidator(_parameter_counts)]


class RecipeSection(BaseModel):
    """A recipe section: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(RecipeSection):
    arch: str = Field(
        "squeezenet1_1_ancestor",
        description="squeezenet1_1_ancestor (the paper's), torchvision:<name> (any torchvision classifier) or "
        "timm:<name> (the [timm] extra)",
    )
    num_classes: int | None = Field(None, ge=1, description="default: the number of data classes")
    weights: str | None = Field(
        "imagenet",
        description="imagenet (the ancestor's shipped weights; a zoo's default ImageNet weights, downloaded), none "
        "(random), a torchvision weights name such as IMAGENET1K_V1, or for the ancestor a .npz/state-dict path",
    )
    head: Literal["auto", "pretrained", "random"] = Field(
        "auto",
        description="the classifier's start: pretrained (the ancestor's ImageNet conv10 rows of the class wnids), "
        "random, or auto: pretrained when the arch is squeezenet1_1_ancestor with ImageNet weights and every class "
        "folder is an ImageNet wnid, else random",
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from ..zoo import check_arch

        try:
            return check_arch(v)
        except Exception as exc:  # one sentence, as a field error
            raise ValueError(str(exc).removeprefix("model.arch must be ").rstrip(".")) from None

    @model_validator(mode="after")
    def _head_fits_arch(self) -> ModelSection:
        if self.head == "pretrained" and self.arch != "squeezenet1_1_ancestor":
            raise ValueError(
                f"head 'pretrained' applies to squeezenet1_1_ancestor only, not {self.arch}; use head: random"
            )
        return self

    init: str | None = Field(
        None, description="a squish-plugin checkpoint (e.g. a trained ancestor) to start from instead of building one"
    )


class DataSection(RecipeSection):
    root: str
    train_split: str = "train"
    val_split: str = "val"
    classes: list[str] | None = None
    train_size: int = Field(128, ge=32, le=1024)
    eval_size: int = Field(224, ge=32, le=1024)
    train_crop: int | None = Field(
        None, ge=16, le=1024, description="train on random windows of this size cut from the train_size images"
    )
    cache_dir: str | None = None
    holdout: float = Field(
        0.1,
        ge=0,
        lt=0.5,
        description="fraction of every training class held out (stratified, seeded by holdout_seed): the only "
        "data fitness, selection and the ancestor check see; no network trains on it. 0: none",
    )
    holdout_seed: int = Field(0, ge=0, description="the held-out slice's own seed: the same slice for every run seed")


class DistillSection(RecipeSection):
    teacher: Literal["none", "ancestor", "parent"] = Field(
        "ancestor",
        description="knowledge distillation while each offspring trains: from the trained ancestor or the parent",
    )
    alpha: float = Field(0.7, ge=0, le=1)
    temperature: float = Field(4.0, gt=0, le=100)


class TrainSection(RecipeSection):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    batch_size: int = Field(32, ge=1, le=4096)
    ancestor_epochs: float = Field(1, ge=0)
    ancestor_lr: float | None = Field(
        None,
        gt=0,
        le=10,
        description="learning rate of the ancestor's fine-tuning (generation 0); default: 0.03 x lr for a pretrained "
        "ancestor (model.weights or model.init), lr for one from random weights",
    )
    ancestor_must_improve: bool = Field(
        True,
        description="with a held-out slice: keep the fine-tuned ancestor only if it scores at least the untrained "
        "one there, else the untrained ancestor is generation 0 (and the teacher)",
    )
    epochs_per_generation: float = Field(1, ge=0)
    epoch_growth: Literal["none", "macs"] = Field(
        "none",
        description="'macs': each generation trains epochs_per_generation x (ancestor MACs / its MACs) epochs, "
        "about the time of the first: cheaper offspring train longer",
    )
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    channels_last: bool = True
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward passes in bfloat16 autocast (CUDA, or a CPU with AVX512-BF16 / AMX)"
    )
    threads: int = Field(2, ge=1, le=256)
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where networks train and are evaluated: auto = a CUDA GPU when PyTorch sees one, else the CPU",
    )
    deterministic: bool = Field(
        True, description="on CUDA, deterministic cuDNN algorithms: same seed, same weights, exact resume (slower)"
    )
    eval_batch_size: int = Field(64, ge=1, le=4096)
    distill: DistillSection = DistillSection()


class LatencySection(RecipeSection):
    backend: Literal["onnxruntime", "pytorch", "file"] = Field(
        "onnxruntime",
        description="where the latency table is measured: here on ONNX Runtime's CPU provider or eager PyTorch, "
        "or 'file': a table measured elsewhere (the TX1 kit's, brought back by bench collect) at `table`",
    )
    table: str | None = Field(
        None, description="the table's file; default: a file per target and model in the cache ($SQUISH_CACHE)"
    )
    threads: int = Field(2, ge=1, le=256)
    batch: int = Field(32, ge=1, le=4096)


class EvolutionSection(RecipeSection):
    generations: int = Field(15, ge=0, le=1000)
    env: float = Field(0.9, gt=0, le=1)
    mode: Literal["paper", "budget"] = "budget"
    resource: Literal["params", "macs", "latency"] = Field(
        "params", description="what mode 'budget' keeps env of: parameters, MACs, or latency measured on a target"
    )
    latency: LatencySection = LatencySection()
    min_channels: int = Field(1, ge=1)
    round_to: int | Literal["auto"] | None = Field(
        16,
        description="kept widths rounded up to this multiple (null: any width); 'auto': the multiple the latency "
        "target runs fastest",
    )
    temperature: float = Field(0.05, gt=0)
    max_drop: float | None = Field(None, gt=0, le=1)
    starvation: Literal["global", "layer", "cost"] = "layer"
    size_tolerance: float | None = Field(
        0.005,
        gt=0,
        lt=1,
        description="repair every offspring to the budget, within this fraction (mode budget; null: no repair; "
        "the default applies to mode budget only)",
    )
    importance: Literal["l1", "l2", "taylor", "activation"] = Field(
        "taylor",
        description="cluster strength in the encoding: filter norms (l1, l2) or measured on strength_images "
        "training images (first-order taylor, mean |activation|)",
    )
    strength_images: int = Field(256, ge=1, le=100000)
    offspring_per_generation: int = Field(1, ge=1, le=64)
    selection: Literal["trained", "proxy", "finetune"] = Field(
        "trained",
        description="how the best of several offspring is chosen, by top-1 on the held-out slice (or, without one, "
        "a fixed slice of training images; never val): after training all of them ('trained'), before training "
        "('proxy': only the winner trains), or after screen_steps of training each ('finetune': the winner goes on)",
    )
    fitness: Literal["top1", "kl"] = Field(
        "top1",
        description="what selection scores on the held-out images: top-1, or minus the mean KL divergence "
        "from the ancestor's outputs ('kl': a graded score, less noisy on a few hundred images)",
    )
    screen_steps: int = Field(30, ge=1, le=100000)
    proxy_images: int = Field(
        512, ge=16, le=100000, description="selection scores at most this many held-out (or training) images"
    )
    reinitialize: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_repair_in_paper_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") == "paper" and "size_tolerance" not in data:
            return {**data, "size_tolerance": None}  # the default repair belongs to mode budget
        return data


class SquishedNetsSection(RecipeSection):
    sizes_mb: list[float] = [2.4, 2.0, 1.3, 0.95]
    rule: Literal["first_below", "pareto"] = "first_below"
    extra_params: ParameterCounts = Field(
        [],
        description="more named networks: the first offspring at or below each parameter count, named by its "
        "reduction vs SqueezeNet v1.1 (123500 -> '10x'); finished like SquishedNet-1..k",
    )

    @field_validator("sizes_mb")
    @classmethod
    def _decreasing(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v) or any(a <= b for a, b in zip(v, v[1:])):
            raise ValueError("must be positive sizes in strictly decreasing order")
        return v


class FinishSection(RecipeSection):
    """The finishing stage: after the generations, every named network fine-tuned for
    ``epochs`` on one warm-up + cosine schedule, distilling from the ancestor."""

    epochs: int = Field(10, ge=0, le=10000, description="finishing epochs per named network; 0: no finishing stage")
    lr: float = Field(0.01, gt=0, le=10)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = Field(5e-4, ge=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    full_size_epochs: int | None = Field(
        None,
        ge=0,
        description="the last N epochs on whole train_size images instead of data.train_crop windows; default: "
        "the last fifth of the epochs (2 of 10)",
    )
    teacher: Literal["ancestor", "none"] = Field("ancestor", description="distil from the run's ancestor, or not")
    alpha: float = Field(0.9, ge=0, le=1)
    temperature: float = Field(4.0, gt=0, le=100)
    networks: list[str] | None = Field(
        None, description="which named networks to finish (e.g. [SquishedNet-4, 10x]); default: every one"
    )

    @model_validator(mode="after")
    def _full_size_fits(self) -> FinishSection:
        if self.epochs and (self.full_size_epochs or 0) > self.epochs:  # epochs 0: no stage, whatever the rest
            raise ValueError("finish.full_size_epochs must be at most finish.epochs")
        return self

    @property
    def full_size(self) -> int:
        """How many of the last epochs train on whole images (the default: a fifth, rounded down)."""
        return self.epochs // 5 if self.full_size_epochs is None else self.full_size_epochs


class OutputSection(RecipeSection):
    dir: str = "runs"


class Recipe(RecipeSection):
    """A whole study: ancestor, data, training, evolution, naming, finishing, output.

    **Defaults are the measured best**: the levers our Imagenette study chose on its held-out
    slice (a 10% held-out slice, first-order Taylor strengths, distillation from the ancestor,
    temperature 0.05, the ancestor fine-tuned at 0.03 x lr, warm-up, widths in multiples of 16
    repaired to the budget, a 10-epoch finishing stage). The paper's literal settings live in
    ``examples/squeezenet10.yaml``; the library's ``SynthesisConfig`` keeps the paper's."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    seed: int = Field(0, ge=0)
    model: ModelSection = ModelSection()
    data: DataSection
    train: TrainSection = TrainSection()
    evolution: EvolutionSection = EvolutionSection()
    squishednets: SquishedNetsSection = SquishedNetsSection()
    finish: FinishSection = FinishSection()
    output: OutputSection = OutputSection()

    @model_validator(mode="after")
    def _crop_fits(self) -> Recipe:
        if self.data.train_crop is not None and self.data.train_crop > self.data.train_size:
            raise ValueError("data.train_crop must be at most data.train_size")
        return self

    @model_validator(mode="after")
    def _repair_needs_budget(self) -> Recipe:
        if self.evolution.size_tolerance is not None and self.evolution.mode != "budget":
            raise ValueError("evolution.size_tolerance repairs offspring to a budget: it needs evolution.mode 'budget'")
        return self

    @model_validator(mode="after")
    def _latency_settings(self) -> Recipe:
        evo = self.evolution
        if isinstance(evo.round_to, int) and evo.round_to < 1:
            raise ValueError("evolution.round_to must be an integer >= 1, 'auto' or null")
        if evo.latency.backend == "file" and evo.latency.table is None:
            raise ValueError("evolution.latency.backend 'file' needs evolution.latency.table (the table's path)")
        return self

    @model_validator(mode="after")
    def _head_needs_weights(self) -> Recipe:
        if self.model.head == "pretrained" and self.model.weights is None:
            raise ValueError("model.head 'pretrained' needs model.weights (e.g. 'imagenet')")
        return self


def recipe_sentence(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{path}'; check the spelling against the documented recipe keys."
    if err["type"] == "missing":
        return f"{source}: required key '{path}' is missing."
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{source}: '{path}' {msg[0].lower() + msg[1:]}{shown}."


def validate_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping of sections, got {type(data).__name__}.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(recipe_sentence(exc, source)) from None


def resolve_paths(data: dict[str, Any], base: Path) -> None:
    for name, keys in (("data", ("root", "cache_dir")), ("model", ("init",))):
        section = data.get(name)
        if not isinstance(section, dict):
            continue
        for key in keys:
            value = section.get(key)
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                section[key] = str((base / value).resolve())
    latency = data.get("evolution", {}).get("latency") if isinstance(data.get("evolution"), dict) else None
    table = latency.get("table") if isinstance(latency, dict) else None
    if isinstance(table, str) and not Path(table).expanduser().is_absolute():
        latency["table"] = str((base / table).resolve())


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe. Relative ``data.root`` and
    ``data.cache_dir`` are resolved against the recipe file's folder, or against the
    working directory when given as an override."""
    path = Path(path)
    data = read_yaml(path)
    if isinstance(data, dict):
        resolve_paths(data, path.parent)  # the recipe's own paths: relative to the file
        data = apply_overrides(data, overrides or [])
        resolve_paths(data, Path.cwd())  # paths given with --set: relative to the shell
    return validate_recipe(data, str(path))
