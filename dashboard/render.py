"""The dashboard page: server-rendered HTML with inline SVG plots (no external assets).

Pure functions of the state ``dashboard.data.collect_state`` returns, so the
page works offline and behind any proxy (IAP, Cloud Run): no CDN, no script
from elsewhere. Forms post to ``/retrain`` and ``/rollback``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.num{text-align:right}
.current{background:#eef8ee}.msg{padding:.5em;background:#fff6d6;border:1px solid #e0c060}
.error{color:#a00}form{display:inline-block;margin-right:1em}code{font-size:.85em}
details{font-size:.85em}.plot text{font-size:11px}
"""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else str(value)


def _short_metrics(metrics: Mapping[str, Any] | None, limit: int = 5) -> str:
    if not isinstance(metrics, Mapping):
        return _fmt(metrics)
    parts = [
        f"{k}={_fmt(v)}"
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return " ".join(parts[:limit])


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">none yet</td></tr>'
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def line_chart_svg(
    series: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    title: str,
    width: int = 720,
    height: int = 260,
) -> str:
    """An SVG line chart: one polyline per series (``[{"t", "value"}]``), legend, axes.

    The y axis spans the data (at least 0.01); the x axis the time range, labelled UTC.
    """
    pad_l, pad_r, pad_t, pad_b = 50, 170, 20, 30
    points = [p for pts in series.values() for p in pts]
    out = [
        f'<svg class="plot" role="img" aria-label="{_e(title)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(title)}</title>",
    ]
    if not points:
        out.append(f'<text x="{pad_l}" y="{height // 2}">no data yet</text></svg>')
        return "".join(out)
    t0, t1 = min(p["t"] for p in points), max(p["t"] for p in points)
    y0, y1 = min(p["value"] for p in points), max(p["value"] for p in points)
    if y1 - y0 < 0.01:
        y0, y1 = y0 - 0.005, y1 + 0.005
    span_t = (t1 - t0) or 1.0
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(p: Mapping[str, float]) -> str:
        x = pad_l + (p["t"] - t0) / span_t * plot_w
        y = pad_t + (1 - (p["value"] - y0) / (y1 - y0)) * plot_h
        return f"{x:.1f},{y:.1f}"

    out.append(
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#999"/>'
    )
    for value, y in ((y1, pad_t + 4), (y0, pad_t + plot_h)):
        out.append(f'<text x="{pad_l - 4}" y="{y}" text-anchor="end">{value:.3g}</text>')
    for t, anchor, x in ((t0, "start", pad_l), (t1, "end", pad_l + plot_w)):
        label = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S")
        out.append(f'<text x="{x}" y="{height - 8}" text-anchor="{anchor}">{label} UTC</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(xy(p) for p in pts)
        out.append(
            f'<polyline class="series" data-version="{_e(name)}" fill="none" '
            f'stroke="{color}" stroke-width="2" points="{coords}"/>'
        )
        for p in pts if len(pts) <= 60 else ():
            x, y = xy(p).split(",")
            out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
        ly = pad_t + 14 * (i + 1)
        out.append(
            f'<rect x="{width - pad_r + 10}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{width - pad_r + 24}" y="{ly}">{_e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _section_error(state: Mapping[str, Any], name: str) -> str:
    error = state.get("errors", {}).get(name)
    return f'<p class="error">could not read: {_e(error)}</p>' if error else ""


def _counts(state: Mapping[str, Any]) -> str:
    counts = state.get("counts") or {}
    rows = [
        [_e(name), f'<span class="num">{_e(n if n is not None else "-")}</span>']
        for name, n in counts.items()
    ]
    return _table(["table", "rows"], rows, "counts")


def statistics_table(statistics: Mapping[str, Any] | None) -> str:
    """A version's training-data statistics (``trainer.statistics``) as a small table."""
    if not isinstance(statistics, Mapping):
        return ""
    columns = dict(statistics.get("features") or {})
    if statistics.get("label"):
        columns["(label)"] = statistics["label"]
    rows = []
    for name, s in columns.items():
        if not isinstance(s, Mapping):
            continue
        if s.get("kind") == "numeric":
            summary = " ".join(f"{k}={_fmt(s.get(k))}" for k in ("mean", "std", "min", "max"))
        else:
            top = list((s.get("frequencies") or {}).items())[:4]
            summary = " ".join(f"{k}:{_fmt(v)}" for k, v in top)
        rows.append([_e(name), _e(s.get("count")), _e(s.get("missing")), _e(summary)])
    title = f"training data statistics ({_e(statistics.get('rows'))} rows)"
    table = _table(["column", "count", "missing", "summary"], rows, "statistics")
    return f"<details><summary>{title}</summary>{table}</details>"


def _models(state: Mapping[str, Any]) -> str:
    models = state.get("models") or {"versions": [], "current": None}
    rows = []
    for v in models["versions"]:
        validation = v.get("data_validation")
        rows.append(
            [
                f"<code>{_e(v['version'])}</code>" + (" <b>(current)</b>" if v["current"] else ""),
                _e(v["status"]),
                _e(v.get("created_at")),
                _e(_short_metrics(v.get("metrics"))),
                "<br>".join(_e(r) for r in v.get("reasons") or []),
                _e(_short_metrics(validation) if isinstance(validation, Mapping) else validation),
                _e(v.get("run_id")),
                statistics_table(v.get("statistics")),
            ]
        )
    return _table(
        ["version", "status", "created", "metrics", "gate decisions", "data validation", "run", ""],
        rows,
        "models",
    )


def _rollback_form(state: Mapping[str, Any], targets: Sequence[str]) -> str:
    models = state.get("models") or {}
    current = models.get("current")
    if not current or not targets:
        return "<p>Roll back: no earlier version to return to.</p>"
    options = "".join(f'<option value="{_e(t)}">{_e(t)}</option>' for t in targets)
    return (
        '<form method="post" action="/rollback" id="rollback-form">'
        f'<input type="hidden" name="if_current" value="{_e(current)}">'
        f"<label>Roll back from <code>{_e(current)}</code> to "
        f'<select name="to_version" id="rollback-version">{options}</select></label> '
        '<button type="submit" id="rollback-button">Roll back</button></form>'
    )


def _runs(state: Mapping[str, Any]) -> str:
    rows = []
    for r in state.get("runs") or []:
        gates = r.get("gate_decisions")
        validation = gates.get("data_validation") if isinstance(gates, Mapping) else None
        metrics = r.get("metrics")
        candidate = metrics.get("candidate") if isinstance(metrics, Mapping) else metrics
        quarantine = "".join(
            f"<li>{_e(q.get('check'))} {_e(q.get('feature'))}: {_e(q.get('detail'))}</li>"
            for q in r.get("quarantine") or []
        )
        details = ""
        if gates or quarantine:
            details = (
                f"<details><summary>details</summary>"
                f"{'<ul>' + quarantine + '</ul>' if quarantine else ''}"
                f"<pre>{_e(json.dumps(gates, indent=1, default=str))}</pre></details>"
            )
        rows.append(
            [
                f'<code class="run-id">{_e(r["run_id"])}</code>',
                _e(r.get("status")),
                _e(r.get("trigger_reason")),
                _e(r.get("reason")),
                _e(r.get("recorded_at")),
                _e(r.get("rows_train")) + " / " + _e(r.get("rows_validation")),
                _e(_short_metrics(candidate)),
                _e(_short_metrics(validation) if isinstance(validation, Mapping) else validation),
                _e(r.get("model_version")),
                details,
            ]
        )
    return _table(
        [
            "run",
            "status",
            "trigger",
            "outcome",
            "recorded",
            "rows train / val",
            "metrics",
            "data validation",
            "version",
            "",
        ],
        rows,
        "runs",
    )


def _dead_letters(state: Mapping[str, Any]) -> str:
    dl = state.get("dead_letters") or {"by_step_reason": [], "recent": []}
    counts = _table(
        ["step", "reason", "count"],
        [
            [_e(r["step"]), _e(r["reason"]), f'<span class="num">{r["count"]}</span>']
            for r in dl["by_step_reason"][:30]
        ],
        "dead-letter-counts",
    )
    recent = _table(
        ["time", "step", "error", "payload"],
        [
            [
                _e(r.get("timestamp")),
                _e(r.get("step")),
                _e(r.get("errorMessage")),
                f"<code>{_e(r.get('payload'))}</code>",
            ]
            for r in dl["recent"]
        ],
        "dead-letter-recent",
    )
    return counts + "<h3>Recent examples</h3>" + recent


def _triggers(state: Mapping[str, Any]) -> str:
    rows = [
        [
            f'<code class="trigger-id">{_e(t.get("trigger_id"))}</code>',
            _e(t.get("reason")),
            _e(t.get("new_examples")),
            _e(t.get("event_time_start")) + " – " + _e(t.get("event_time_end")),
            _e(t.get("created_at")),
        ]
        for t in state.get("triggers") or []
    ]
    return _table(["trigger", "reason", "new examples", "event time", "created"], rows, "triggers")


def page(
    state: Mapping[str, Any],
    *,
    targets: Sequence[str],
    message: str | None = None,
    refresh_seconds: int = 0,
) -> str:
    """The whole dashboard page."""
    metric = state.get("quality_metric", "accuracy")
    refresh = (
        f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    )
    msg = f'<p class="msg" id="message">{_e(message)}</p>' if message else ""
    chart = line_chart_svg(
        state.get("quality") or {}, title=f"online {metric} per model version over time"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>{_e(state.get("dataset"))}: continuous training</title><style>{_CSS}</style></head>
<body>
<h1>{_e(state.get("dataset"))}: continuous training
<small>({_e(state.get("project"))}.{_e(state.get("bq_dataset"))})</small></h1>
{msg}
<form method="post" action="/retrain" id="retrain-form">
<button type="submit" id="retrain-button">Retrain now</button></form>
{_rollback_form(state, targets)}
<h2>Online quality ({_e(metric)}) per model version</h2>{_section_error(state, "quality")}
{chart}
<h2>Training runs</h2>{_section_error(state, "runs")}{_runs(state)}
<h2>Model versions</h2>{_section_error(state, "models")}{_models(state)}
<h2>Retrain triggers</h2>{_section_error(state, "triggers")}{_triggers(state)}
<h2>Dead letters</h2>{_section_error(state, "dead_letters")}{_dead_letters(state)}
<h2>Pipeline tables</h2>{_section_error(state, "counts")}{_counts(state)}
</body></html>"""
