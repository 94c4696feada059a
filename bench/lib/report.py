"""The benchmark's outputs: the table on stdout, bench/results.md and the PNG chart."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from common import REPO, Ctx, Row


def fmt(x: float | None) -> str:
    """A figure with 3 significant digits, or a dash."""
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def goals_text(row: Row) -> str:
    """Each goal of a row with its verdict."""
    parts = []
    for text, met in row.met():
        mark = "?" if met is None else ("met" if met else "MISSED")
        parts.append(f"{text}: {mark}")
    return "; ".join(parts)


def ratios_text(row: Row) -> str:
    """ferry's ratio to each peer (>1 means ferry is better)."""
    return ", ".join(f"{fmt(row.ratio(p))}x {p}" for p in row.peers if row.ratio(p) is not None)


def table(rows: list[Row]) -> str:
    """A plain-text table of every row."""
    lines = []
    for r in rows:
        peers = ", ".join(f"{p} {fmt(v)}" for p, v in r.peers.items())
        lines.append(f"{r.workload} [{r.unit}]: ferry {fmt(r.ferry)} | {peers}")
        if r.peers:
            lines.append(f"    ratios: {ratios_text(r)}")
        if r.goals or r.checks:
            lines.append(f"    goals: {goals_text(r)}")
        if r.note:
            lines.append(f"    note: {r.note}")
    return "\n".join(lines)


def machine() -> str:
    """What the figures were measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def write_markdown(rows: list[Row], path: Path, machine: str, ctx: Ctx, minutes: float) -> None:
    """bench/results.md: the run's table with ratios and goals."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=REPO).stdout.strip() or "unknown"
    out = [
        "# ferry benchmark results",
        "",
        f"Measured by `bench/run{' --quick' if ctx.quick else ''}` on {time.strftime('%Y-%m-%d')}, "
        f"ferry at {rev}, on {machine}; everything on 127.0.0.1, warm page cache. "
        f"Each figure is the median of {ctx.runs} run(s); the run took {minutes:.0f} min. "
        "Ratios compare ferry with each peer measured in the same run: above 1 means ferry "
        "is better (faster, or smaller for latency and memory).",
        "",
    ]
    group = None
    for r in rows:
        if r.group != group:
            group = r.group
            out += ["", f"## {group}", "", "| workload | ferry | peers | ratios | goals |",
                    "|---|---|---|---|---|"]
        peers = "<br>".join(f"{p}: {fmt(v)}" for p, v in r.peers.items()) or "-"
        goals = goals_text(r) or "-"
        note = f"<br>*{r.note}*" if r.note else ""
        out.append(f"| {r.workload} ({r.unit}){note} | {fmt(r.ferry)} | {peers} | "
                   f"{ratios_text(r) or '-'} | {goals} |")
    path.write_text("\n".join(out) + "\n")


def chart(rows: list[Row], path: Path, machine: str) -> None:
    """A bar chart of ferry's ratio to each goal's peer, with the goal marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    for r in rows:
        for g in r.goals:
            ratio = r.ratio(g.peer)
            if ratio is not None:
                bars.append((f"{r.workload}\nvs {g.peer}", ratio, g.ratio if g.kind == "min"
                             else 1 / g.ratio))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(bars) + 1.4))
    labels = [b[0].replace("\n", " ") for b in bars]
    ys = range(len(bars))
    colors = ["#2e7d32" if b[1] >= b[2] else "#c62828" for b in bars]
    ax.barh(ys, [b[1] for b in bars], color=colors)
    for y, b in zip(ys, bars):
        ax.plot([b[2], b[2]], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(b[1], y, f" {b[1]:.2f}x", va="center", fontsize=8)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("ferry's ratio to the peer (log scale; > 1 is better; black tick = goal)")
    ax.set_title(f"ferry against the tools it replaces — {machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
