"""PNG plots of an evaluation (matplotlib, Agg): SLO attainment vs rate, GPU cost vs rate, TTFT
and TBT CDFs, and the gap to the optimal bound. Each scheduler keeps its colour and marker in
every plot. Images are written as palette PNGs (a few tens of KB each)."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 90
MARKERS = "os^vD<>pPhX*"


def _style(entrants: list) -> dict:
    """Trained policies (``ppo:...``) in black and bold, the optimal replay in gold; heuristics
    cycle through tab10, solid lines for the first ten and dashed for the next."""
    cmap = plt.get_cmap("tab10")
    out, i = {}, 0
    for e in entrants:
        if e.startswith("ppo"):
            out[e] = {"color": "black", "marker": "*", "linestyle": "-", "linewidth": 2.4}
        elif e == "optimal":
            out[e] = {"color": "#d4a017", "marker": "P", "linestyle": "-", "linewidth": 2.0}
        else:
            out[e] = {"color": cmap(i % 10), "marker": MARKERS[i % len(MARKERS)],
                      "linestyle": "-" if i < 10 else "--", "linewidth": 1.2}
            i += 1
    return out


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    # a 128-colour palette keeps line plots readable at a fraction of the RGBA size
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _legend(fig, axes, entrants: list) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    order = [labels.index(e) for e in entrants if e in labels] + [i for i, l in enumerate(labels)
                                                                   if l.endswith(" target")][:1]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, title="scheduler", title_fontsize=9)


def _sweep_plot(s: dict, metric: str, ylabel: str, title: str, path: Path, style: dict,
                threshold=None, ylim=None, log_if_spread: bool = False) -> None:
    """One panel per variant: ``metric``'s mean over seeds against the rate, 95% CI bars."""
    sd = s["suite"]
    variants = list(sd["variants"])
    fig, axes = plt.subplots(1, len(variants), figsize=(4.6 * len(variants) + 0.4, 3.6), squeeze=False,
                             sharey=True)
    axes = axes[0]
    for ax, v in zip(axes, variants):
        conds = [c for c in s["conditions"] if c["variant"] == v]
        x = np.array([c["rate"] for c in conds])
        for e in s["entrants"]:
            m = np.array([c["entrants"][e]["stats"][metric]["mean"] for c in conds], dtype=float)
            h = np.array([c["entrants"][e]["stats"][metric]["half"] for c in conds], dtype=float)
            if np.all(np.isnan(m)):
                continue
            st = style[e]
            ax.errorbar(x, m, yerr=np.where(np.isnan(h), 0, h), label=e, color=st["color"], marker=st["marker"],
                        linestyle=st["linestyle"], markersize=4, linewidth=st["linewidth"], capsize=2,
                        elinewidth=0.8)
        if ylim is not None:
            ax.set_ylim(*ylim)
        elif log_if_spread and _spread(ax) > 8:
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
        if threshold is not None:
            ax.axhline(threshold, color="0.3", linestyle=":", linewidth=1.2, label=f"{threshold:.0%} target")
        ax.set_xlabel(sd_rate_label(sd))
        ax.grid(True, alpha=0.3)
        if len(variants) > 1:
            ax.set_title(v, fontsize=10)
    axes[0].set_ylabel(ylabel + (", log scale" if axes[0].get_yscale() == "log" else ""))
    fig.suptitle(title, fontsize=11)
    _legend(fig, axes, s["entrants"])
    fig.tight_layout()
    _save(fig, path)


def _spread(ax) -> float:
    """max / min of the positive y data drawn on ``ax`` (1 when there is none)."""
    ys = np.concatenate([np.asarray(l.get_ydata(), dtype=float) for l in ax.get_lines()] or [np.ones(1)])
    ys = ys[np.isfinite(ys) & (ys > 0)]
    return float(ys.max() / ys.min()) if ys.size else 1.0


def sd_rate_label(sd: dict) -> str:
    return ("trace rate scale (x the trace's own pace)" if sd["rate_unit"] == "rate scale"
            else "arrival rate (requests/s)")


def _targets(sd: dict, variant: str, field: str) -> list:
    return sorted({c[field] for c in sd["variants"][variant]["slo_classes"]})


def _cdf_plot(s: dict, path: Path, style: dict) -> None:
    sd = s["suite"]
    variants = [v for v in sd["variants"] if v in s["cdf"]]
    fig, axes = plt.subplots(len(variants), 2, figsize=(10, 3.3 * len(variants)), squeeze=False)
    for row, v in zip(axes, variants):
        for ax, which, label, field in ((row[0], "ttft_s", "time to first token (s)", "ttft_s"),
                                        (row[1], "tbt_s", "time between tokens (s)", "tbt_s")):
            for e in s["entrants"]:
                c = s["cdf"][v].get(e)
                if not c or c[which] is None:
                    continue
                q = np.maximum(np.asarray(c[which]), 1e-4)
                ax.plot(q, s["cdf_levels"], label=e, color=style[e]["color"], linestyle=style[e]["linestyle"],
                        linewidth=style[e]["linewidth"], drawstyle="steps-post")
            for t in _targets(sd, v, field):
                ax.axvline(t, color="0.3", linestyle=":", linewidth=1)
                ax.text(t, 0.02, f" SLO {t:g} s", rotation=90, va="bottom", ha="right", fontsize=7, color="0.3")
            ax.set_xscale("log")
            ax.set_xlabel(label + " (log scale)")
            ax.set_ylabel("fraction of " + ("requests" if which == "ttft_s" else "token gaps") + " <= x")
            ax.set_ylim(0, 1.01)
            ax.grid(True, alpha=0.3, which="both")
            vt = "" if v == "main" else f"{v}: "
            ax.set_title(f"{vt}{'TTFT' if which == 'ttft_s' else 'TBT'} CDF at {sd['table_rate']:g} "
                         f"{sd['rate_unit']}", fontsize=10)
    _legend(fig, [axes[0][0]], s["entrants"])
    fig.suptitle(f"{sd['title']}: latency distributions (quantiles averaged over seeds)", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def _gap_plot(s: dict, path: Path, style: dict) -> None:
    """Bars: each scheduler's GPU busy time above the proven lower bound, mean over instances with
    95% CI; a second, hatched bar against the best schedule found where some solve was not
    proven optimal (otherwise the two coincide)."""
    cond = s["conditions"][0]
    ents = [e for e in s["entrants"] if cond["entrants"][e]["stats"]["gap_to_bound_pct"]["n"] > 0]
    all_optimal = s["statuses"] == ["OPTIMAL"]
    bars = [("gap_to_bound_pct", "to the proven lower bound", None)]
    if not all_optimal:
        bars.append(("gap_to_best_pct", "to the best schedule found", "//"))
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(ents) * len(bars) + 1.4))
    y = np.arange(len(ents))
    height = 0.8 / len(bars)
    for b, (k, lab, hatch) in enumerate(bars):
        m = np.array([cond["entrants"][e]["stats"][k]["mean"] for e in ents], dtype=float)
        h = np.array([cond["entrants"][e]["stats"][k]["half"] for e in ents], dtype=float)
        off = (b - (len(bars) - 1) / 2) * height
        ax.barh(y + off, m, height=height * 0.95, xerr=np.where(np.isnan(h), 0, h), label=lab, hatch=hatch,
                color=[style[e]["color"] for e in ents], edgecolor="0.2", linewidth=0.5,
                error_kw={"elinewidth": 0.8, "capsize": 2})
    ax.set_yticks(y, ents, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="0.2", linewidth=0.8)
    ax.set_xlabel("GPU busy time above the CP-SAT " + ("optimum" if all_optimal else "bound")
                  + " (%; mean over instances, 95% CI)")
    ax.grid(True, axis="x", alpha=0.3)
    if len(bars) > 1:
        ax.legend(fontsize=8, loc="lower right")
    n = len(s["instances"])
    status = "every instance solved to optimality" if all_optimal else ", ".join(s["statuses"])
    ax.set_title(f"{s['suite']['title']}\n{n} instances, {status}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _draw(kind: str, s: dict, path: Path, style: dict) -> None:
    if kind == "gap":
        _gap_plot(s, path, style)
    elif kind == "cdf":
        _cdf_plot(s, path, style)
    elif kind == "attainment":
        _sweep_plot(s, "slo_attainment", "SLO attainment (fraction of requests)",
                    f"{s['suite']['title']}: SLO attainment vs load", path, style, threshold=0.9, ylim=(-0.02, 1.04))
    else:
        n_req = s["suite"]["variants"][next(iter(s["suite"]["variants"]))]["num_requests"]
        _sweep_plot(s, "gpu_busy_s", f"GPU busy per run (GPU-s)\nruns of {n_req} requests",
                    f"{s['suite']['title']}: GPU cost vs load", path, style, log_if_spread=True)


def plot_all(result: dict, img_dir: Path, rel_to: Path, workers: int = 1) -> dict:
    """Write every plot of ``result`` under ``img_dir`` (on ``workers`` processes); returns
    {suite: {kind: path relative to ``rel_to``}} for the report's links."""
    img_dir.mkdir(parents=True, exist_ok=True)
    entrants = []
    for s in result["suites"].values():
        for e in s["entrants"]:
            if e not in entrants:
                entrants.append(e)
    style = _style(entrants)
    tasks, out = [], {}
    for name, s in result["suites"].items():
        if "instances" in s:
            has_gap = any(c["entrants"][e]["stats"]["gap_to_bound_pct"]["n"]
                          for c in s["conditions"] for e in s["entrants"])
            kinds = ["gap"] if has_gap else []
        else:
            kinds = ["attainment", "gpu"] + (["cdf"] if s["cdf"] else [])
        out[name] = {}
        for kind in kinds:
            path = img_dir / f"{name}_{kind}.png"
            tasks.append((kind, s, path, style))
            out[name][kind] = str(path.resolve().relative_to(rel_to.resolve()))
    if workers > 1 and len(tasks) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
            for f in [pool.submit(_draw, *t) for t in tasks]:
                f.result()
    else:
        for t in tasks:
            _draw(*t)
    return out
