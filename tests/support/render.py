"""Draw dashboard panels from a live Prometheus into one PNG, as Grafana would draw their time
series: the docs' picture of the dashboard, taken from a real run. Grafana and a headless browser
are not available here; matplotlib (`pip install '.[render]'`) is. The e2e tests call it when
KAITOPY_DASHBOARD_PNG_DIR is set, after they checked the panels have data."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tests.support.dashboards import Panel
from tests.support.prometheus import Prometheus

PNG_DIR_ENV = "KAITOPY_DASHBOARD_PNG_DIR"


def requested(name: str) -> Path | None:
    """Where to write `name`.png, when the run asked for pictures."""
    d = os.environ.get(PNG_DIR_ENV)
    return Path(d) / f"{name}.png" if d else None


def render(
    prom: Prometheus, panels: Sequence[Panel], start: float, end: float, out: Path, title: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt
    from matplotlib.dates import DateFormatter

    cols = 3
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
    step = max(1.0, (end - start) / 300)
    for ax, panel in zip(axes.flat, panels, strict=False):
        drawn = 0
        for expr in panel.queries:
            for series in prom.query_range(expr, start, end, step=step):
                points = [(float(t), float(v)) for t, v in series["values"] if not math.isnan(float(v))]
                if not points:
                    continue
                label = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()) if k != "__name__")
                ax.plot(
                    [datetime.fromtimestamp(t, UTC) for t, _ in points],
                    [v for _, v in points],
                    label=(label or expr)[:60],
                    linewidth=1.2,
                )
                drawn += 1
        ax.set_title(panel.title, fontsize=10)
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if drawn and drawn <= 6:
            ax.legend(fontsize=6, loc="upper left")
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
