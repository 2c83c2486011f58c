"""Latency on a target, in one place: layer timers (ONNX Runtime on the CPU, eager PyTorch;
:mod:`.timers`), the per-layer grid a table times and the channel multiple the target runs
fastest (:mod:`.grid`), the fit of a table to whole networks timed on the same target
(:mod:`.calibration`), and the same table measured on a Jetson TX1 with trtexec
(:mod:`.kit`). The table itself and the prediction it makes are
:mod:`squish_plugin.synthesis.latency`'s; which table a recipe reads is
:mod:`squish_plugin.study.latency`'s: this package knows no recipe or run directory.

A *layer timer* is any callable ``timer(geometry, cin, cout) -> ms per batch`` for one
Conv/Linear (with its ReLU) of ``geometry`` (op, kernel, stride, padding, input
height/width) at ``cin -> cout`` channels; tests hand in fake ones, the TX1 kit measures
the same grid with trtexec on the device.
"""

from ...synthesis.surgery import predict_ms
from .calibration import fit_splits, fit_whole
from .grid import (
    GRID_PASSES,
    LINEAGES,
    RANDOM_NETWORKS,
    ROUND_TO_CANDIDATES,
    ROUND_TO_FRACTIONS,
    calibration_members,
    calibration_networks,
    choose_round_to,
    cut_to,
    fastest_multiple,
    layer_grids,
    layer_macs,
    measure_table,
    round_to_from_times,
    table_error,
    time_networks,
    with_widths,
)
from .timers import LayerTimer, onnxruntime_layer_timer, pytorch_layer_timer, target_of

__all__ = [
    "GRID_PASSES",
    "LINEAGES",
    "RANDOM_NETWORKS",
    "ROUND_TO_CANDIDATES",
    "ROUND_TO_FRACTIONS",
    "LayerTimer",
    "calibration_members",
    "calibration_networks",
    "choose_round_to",
    "cut_to",
    "fastest_multiple",
    "fit_splits",
    "fit_whole",
    "layer_grids",
    "layer_macs",
    "measure_table",
    "onnxruntime_layer_timer",
    "predict_ms",
    "pytorch_layer_timer",
    "round_to_from_times",
    "table_error",
    "target_of",
    "time_networks",
    "with_widths",
]
