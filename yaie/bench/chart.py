"""A PNG of grouped bars: one panel per metric, workloads along x, one bar per system (matplotlib, Agg).

Input is plain numbers (`ChartData`), so this module knows nothing about how they were measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(frozen=True)
class ChartPanel:
    """`values[s][w]` is system s's number for workload w; None (failed or not measured) draws a grey × at 0."""

    title: str
    values: tuple[tuple[float | None, ...], ...]


@dataclass(frozen=True)
class ChartData:
    title: str
    workload_names: tuple[str, ...]
    system_names: tuple[str, ...]
    panels: tuple[ChartPanel, ...]

    def __post_init__(self) -> None:
        if not self.workload_names or not self.system_names or not self.panels:
            raise ValueError("workload_names, system_names and panels must be non-empty")
        for panel in self.panels:
            shape = [len(row) for row in panel.values]
            if len(panel.values) != len(self.system_names) or set(shape) != {len(self.workload_names)}:
                raise ValueError(f"panel {panel.title!r}: values must be [num_systems={len(self.system_names)}]"
                                 f"[num_workloads={len(self.workload_names)}], got {len(panel.values)} x {shape}")


def write_chart(data: ChartData, path: str | Path, dpi: int = 110) -> Path:
    """Draw `data` and save it as a PNG at `path` (parent folders are created)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_panels = len(data.panels)
    figure, axes = plt.subplots(1, num_panels, figsize=(4.8 * num_panels, 4.2), squeeze=False)
    for axis, panel in zip(axes[0], data.panels, strict=True):
        _draw_panel(axis, panel, data.workload_names, data.system_names)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    figure.suptitle(data.title)
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, format="png", dpi=dpi)
    plt.close(figure)
    return out_path


def _draw_panel(axis: Axes, panel: ChartPanel, workload_names: Sequence[str], system_names: Sequence[str]) -> None:
    bar_width = 0.8 / len(system_names)
    for system_index, (name, row) in enumerate(zip(system_names, panel.values, strict=True)):
        positions = [w + (system_index - (len(system_names) - 1) / 2) * bar_width for w in range(len(row))]
        heights = [value if value is not None else 0.0 for value in row]
        axis.bar(positions, heights, bar_width, label=name)
        for position, value in zip(positions, row, strict=True):
            if value is None:  # mark "not measured" so a missing bar is not read as zero
                axis.annotate("×", (position, 0), ha="center", va="bottom", fontsize=9, color="grey")
    axis.set_title(panel.title, fontsize=10)
    axis.set_xticks(range(len(workload_names)), workload_names)
    axis.grid(axis="y", alpha=0.3)
