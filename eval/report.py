"""Write the evaluation: a markdown report (tables, best per column in bold, plots linked), a CSV
with one row per (suite, variant, rate, scheduler, metric), and a JSON of everything."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import json

from .aggregate import GAP_METRICS, METRICS, OPTIMAL, best_of
from .stats import CI_METHOD

CSV_FIELDS = ("suite", "variant", "rate", "rate_unit", "scheduler", "metric", "unit", "mean", "ci95_half",
              "ci95_low", "ci95_high", "n_seeds")


def _fin(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(v: float, fmt: str, half: bool = False) -> str:
    """``fmt`` for fixed decimals ("{:.3f}"); for significant digits ("{:.3g}") thousands are
    written out with separators (12,345) and a half-width gets two significant digits."""
    if not fmt.endswith("g}"):
        text = fmt.format(v)
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.2g}" if half else fmt.format(v)


def _cell(st: dict, fmt: str, best: float, censor: str = "") -> str:
    m, h = st["mean"], st["half"]
    if not _fin(m):
        return "-"
    text = censor + _fmt(m, fmt)
    if _fin(best) and math.isclose(m, best, rel_tol=1e-9, abs_tol=1e-12):
        text = f"**{text}**"
    return text + (f" ± {_fmt(h, fmt, half=True)}" if _fin(h) else "")


def _table(header: list, rows: list) -> list:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _goodput_cell(g: dict, rates: list, best: float) -> str:
    """Mean ± half-width; "≥" when some seed still met the target at the highest rate (the mean
    is then a lower bound), "< r" when every seed missed it at the lowest rate r."""
    st, cens = g["stats"], g["censored"]
    if st["n"] == 0:
        return "-"
    if all(c == "below" for c in cens):
        return f"< {rates[0]:g}"
    if all(c == "above" for c in cens):
        text = f"≥ {rates[-1]:g}"
        return f"**{text}**" if _fin(best) and math.isclose(st["mean"], best) else text
    return _cell(st, "{:.3g}", best, "≥ " if "above" in cens else "")


def goodput_table(suites: dict) -> list:
    """Rows: entrant; columns: every (suite, variant) with a rate sweep."""
    cols = [(name, v) for name, s in suites.items() if "goodput" in s and len(s["suite"]["rates"]) > 1
            for v in s["goodput"]]
    if not cols:
        return []
    entrants = []
    for name, _ in cols:
        for e in suites[name]["entrants"]:
            if e not in entrants:
                entrants.append(e)
    header = ["scheduler"] + [f"{n}" + (f" / {v}" if v != "main" else "") + f" ({suites[n]['suite']['rate_unit']})"
                              for n, v in cols]
    best = {}
    for n, v in cols:
        best[(n, v)] = best_of({e: g["stats"]["mean"] for e, g in suites[n]["goodput"][v].items()}, +1)
    rows = []
    for e in entrants:
        row = [f"`{e}`"]
        for n, v in cols:
            g = suites[n]["goodput"][v].get(e)
            if g is None:
                row.append("-")
                continue
            row.append(_goodput_cell(g, suites[n]["suite"]["rates"], best[(n, v)]))
        rows.append(row)
    return _table(header, rows)


def _metric_table(cond: dict, metrics) -> list:
    header = ["scheduler"] + [f"{t} ({u})" for _, t, u, _, _ in metrics]
    ents = cond["entrants"]
    best = {k: best_of({e: d["stats"][k]["mean"] for e, d in ents.items()}, b) for k, _, _, b, _ in metrics}
    rows = []
    for e, d in ents.items():
        rows.append([f"`{e}`"] + [_cell(d["stats"][k], fmt, best[k]) for k, _, _, _, fmt in metrics])
    return _table(header, rows)


def _attainment_by_rate(s: dict, variant: str) -> list:
    conds = [c for c in s["conditions"] if c["variant"] == variant]
    header = ["scheduler"] + [f"{c['rate']:g}" for c in conds]
    best = [best_of({e: d["stats"]["slo_attainment"]["mean"] for e, d in c["entrants"].items()}, +1) for c in conds]
    rows = []
    for e in s["entrants"]:
        rows.append([f"`{e}`"] + [_cell({**c["entrants"][e]["stats"]["slo_attainment"], "half": math.nan},
                                        "{:.2f}", b) for c, b in zip(conds, best)])
    return _table(header, rows)


def _errors(s: dict) -> list:
    out = []
    for c in s["conditions"]:
        for e, d in c["entrants"].items():
            refused = {r["error"] for r in d["per_seed"] if r and r.get("refused")}
            for msg in d["errors"]:
                what = "refused the workload" if msg in refused else "failed"
                out.append(f"- `{e}` {what} at {c['variant']}, rate {c['rate']:g}: {msg}")
    return out


def _settings(sd: dict) -> str:
    eng = ", ".join(f"{k}={v}" for k, v in sd["engine"].items()) or "the preset's defaults"
    rates = ", ".join(f"{r:g}" for r in sd["rates"])
    return (f"Preset `{sd['preset']}`; engine: {eng}; rates ({sd['rate_unit']}): {rates}; "
            f"{sd['seeds']} seed(s) per point; suite file `{Path(sd['source']).name}`.")


def markdown(result: dict, images: dict) -> str:
    """The report. ``images``: {suite: {kind: relative path}}."""
    meta = result["meta"]
    lines = ["# Evaluation: schedulers on identical workloads", "",
             f"Generated by `{meta['command']}`" + (f" at commit `{meta['commit']}`" if meta.get("commit") else "")
             + ("; **quick mode** (fewer rates, seeds and requests: a smoke test, not a result)" if meta["quick"] else "")
             + ".", "",
             "Schedulers (specs): " + ", ".join(f"`{e}`" for e in meta["entrants"]) + ".", "",
             *_policy_note(meta),
             f"Every scheduler runs the same workloads (same seeds). Numbers are means over seeds; "
             f"`± h` is the half-width of the {CI_METHOD}. **Bold** marks the best mean of a column "
             "(highest attainment and goodput, lowest otherwise). SLO attainment counts a request as met when "
             "it finishes, its TTFT is within its target and the P99 of its token gaps (TBT) is within its "
             "target. Goodput is the highest rate at which SLO attainment stays >= "
             f"{result['threshold']:.0%}, per seed, linearly interpolated between the swept rates "
             "(`≥` = still met at the highest swept rate by some seed, so the mean is a lower bound; a seed "
             "that misses it at the lowest rate counts 0, and `<` = every seed missed it there). "
             "GPU busy = summed step latencies x GPUs (GPU-seconds for the whole run). TBT percentiles are over "
             "all token gaps of the run; TTFT percentiles over requests.", ""]
    for name, why in result["skipped"].items():
        lines += [f"> Suite `{name}` skipped: {why}", ""]
    gt = goodput_table(result["suites"])
    if gt:
        lines += ["## Goodput (highest rate with SLO attainment >= 90%)", ""] + gt + [""]
    if result.get("headroom"):
        lines += _headroom_section(result["headroom"])
    for name, s in result["suites"].items():
        sd = s["suite"]
        lines += [f"## {sd['title']} (`{name}`)", "", sd["description"], "", _settings(sd), ""]
        img = images.get(name, {})
        if "optimal" in sd and sd["optimal"] and "instances" in s:
            lines += _optimal_section(s, img)
        else:
            for kind, title in (("attainment", "SLO attainment vs rate"), ("gpu", "GPU cost vs rate"),
                                ("cdf", "TTFT and TBT CDFs")):
                if kind in img:
                    lines += [f"![{title}]({img[kind]})", ""]
            for variant in sd["variants"]:
                vt = "" if variant == "main" else f", variant `{variant}`"
                cond = next(c for c in s["conditions"] if c["variant"] == variant and c["rate"] == sd["table_rate"])
                at = (f"rate scale {sd['table_rate']:g}" if sd["rate_unit"] == "rate scale"
                      else f"{sd['table_rate']:g} {sd['rate_unit']}")
                lines += [f"### At {at}{vt}", ""] + _metric_table(cond, METRICS) + [""]
                lines += [f"SLO attainment by rate ({sd['rate_unit']}){vt}:", ""] + _attainment_by_rate(s, variant) + [""]
        errs = _errors(s)
        if errs:
            lines += ["Runs without results (no numbers in the tables above for these):", ""] + errs + [""]
    return "\n".join(lines).rstrip() + "\n"


def _headroom_section(h: dict) -> list:
    """Every scheduler's distance to the relaxation bounds (``baselines/bound.py``)."""
    from eval.stats import format_interval as ci
    b = h["bounds"]
    n = h["seeds"][1] - h["seeds"][0] + 1
    lines = ["## Headroom: distance to the relaxation bounds", "",
             f"`{h['scenario']}` env scenario, held-out reset seeds {h['seeds'][0]}-{h['seeds'][1]}: "
             f"{n} episodes; a scheduler's row leaves out the episodes the env "
             "truncated for it before every request finished (`episodes`: those it served to the end). "
             "`GPU_lb` (a proven lower bound on GPU-seconds) and `met_ub` (a proven upper bound on the requests "
             "meeting their SLO) hold for every schedule (`baselines/bound.py`, docs/bound.md), so the return "
             "is at most `met_ub - lambda x GPU_lb`. Means over episodes [95% t-interval]; bounds: GPU_lb "
             f"{b['gpu_lb']['mean']:.2f} GPU-s, met_ub {b['met_ub']['mean']:.1f} (solved exactly in "
             f"{b['met_ub_exact']} of {n}), return bound {b['return_ub']['mean']:.2f}.", ""]
    rows = sorted(h["schedulers"].items(), key=lambda kv: kv[1]["return_gap"]["mean"])
    lines += _table(["scheduler", "episodes", "return", "GPU-s / GPU_lb", "met_ub - met", "return bound - return"],
                    [[f"`{s}`", str(v["episodes"]), f"{v['return']['mean']:.2f}", ci(v["gpu_over_lb"], "{:.3f}"), ci(v["met_gap"]),
                      ci(v["return_gap"])] for s, v in rows])
    return lines + [""]


def _policy_note(meta: dict) -> list:
    pol = [e for e in meta["entrants"] if e.startswith("ppo")]
    where = meta.get("policy_suites", "all")
    if not pol or where == "all":
        return []
    return [f"Policies ({', '.join(f'`{p}`' for p in pol)}) were run on the suite(s) {', '.join(where)} only "
            "(`--policy-suites`); `-` marks where they were not run.", ""]


def _optimal_section(s: dict, img: dict) -> list:
    sd = s["suite"]
    o = sd["optimal"]
    ins = s["instances"]
    st = ", ".join(f"{sum(1 for i in ins if i.get('status') == x)} {x}" for x in s["statuses"])
    lines = [f"CP-SAT objective `{o['objective']}` (minimise GPU busy seconds), time limit {o['time_limit_s']:g} s per "
             f"instance, preemption {'allowed' if o['preemption'] else 'off'}; solver status over {len(ins)} "
             f"instance(s): {st}. `gap to bound` = (GPU busy - proven lower bound) / bound; `gap to best found` "
             "= (GPU busy - the solver's best schedule) / that schedule's value; `optimal` is that schedule "
             "replayed through the engine. Where the status is OPTIMAL the two gaps coincide. The objective is GPU time "
             "alone, so the optimal schedule may meet fewer SLOs than a heuristic.", ""]
    if "gap" in img:
        lines += [f"![optimality gap]({img['gap']})", ""]
    for c in s["conditions"]:
        lines += _metric_table(c, GAP_METRICS) + [""]
    rows = [[str(i["seed_index"]), i.get("status", "-"), *(f"{i[k]:.5g}" if _fin(i.get(k)) else "-"
                                                        for k in ("value", "bound")),
             str(i.get("batches_used", "-")), str(i.get("hint", ["-"])[0] if i.get("hint") else "-"),
             i.get("error", "")] for i in ins]
    lines += ["Instances:", ""] + _table(["seed", "status", "best GPU-s", "bound GPU-s", "batches", "hint from",
                                          "error"], rows) + [""]
    return lines


def csv_rows(result: dict) -> list[dict]:
    rows = []
    for name, s in result["suites"].items():
        sd = s["suite"]
        unit = sd["rate_unit"]
        metrics = GAP_METRICS if "instances" in s else METRICS
        for c in s["conditions"]:
            for e, d in c["entrants"].items():
                for k, _, u, _, _ in metrics:
                    st = d["stats"][k]
                    rows.append({"suite": name, "variant": c["variant"], "rate": c["rate"], "rate_unit": unit,
                                 "scheduler": e, "metric": k, "unit": u, "mean": st["mean"], "ci95_half": st["half"],
                                 "ci95_low": st["low"], "ci95_high": st["high"], "n_seeds": st["n"]})
        for v, per in s.get("goodput", {}).items():
            for e, g in per.items():
                st = g["stats"]
                rows.append({"suite": name, "variant": v, "rate": "", "rate_unit": unit, "scheduler": e,
                             "metric": "goodput", "unit": unit, "mean": st["mean"], "ci95_half": st["half"],
                             "ci95_low": st["low"], "ci95_high": st["high"], "n_seeds": st["n"]})
    return rows


def _num(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.7g}"
    return v


def write_all(result: dict, out: Path, images: dict) -> dict:
    """Write ``evaluation.md``, ``evaluation.csv`` and ``evaluation.json`` under ``out``; returns
    their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "evaluation.md", "csv": out / "evaluation.csv", "json": out / "evaluation.json"}
    paths["markdown"].write_text(markdown(result, images))
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in csv_rows(result):
            w.writerow({k: _num(v) for k, v in r.items()})
    paths["json"].write_text(json.dumps(_clean({**result, "images": images}), separators=(",", ":")) + "\n")
    return paths


def _clean(o):
    """JSON-ready: NaN/inf -> null, floats to 7 significant digits, tuples -> lists."""
    if isinstance(o, float):
        return float(f"{o:.7g}") if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o
