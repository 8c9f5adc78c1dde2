"""The suite's tables, in Markdown, from the raw results (plain dicts: what ``--json`` writes).

Nothing is measured here; every verdict compares a value with its row of ``targets.TARGETS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from targets import DEFAULT_PACE, TARGETS

_PEER_NAMES = {
    "bulkexport": "bulkexport CLI",
    "requests": "peer: sync requests loop",
    "aiohttp": "peer: asyncio aiohttp gather",
    "dlt": "peer: dlt rest_api (parallelized)",
    "ceiling": "ceiling: raw aiohttp loop (no parsing, no output)",
}
_STAGES = (
    ("parse", "orjson.loads of the body"),
    ("flatten", "Flattener.add per response"),
    ("build", "Flattener.build, amortised per response"),
    ("stage", "Staging.write (fsynced), amortised per response"),
    ("publish", "ParquetPublisher.publish into Parquet, amortised per response"),
)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in [head, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def target_values(res: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Each target's value and how it reads, from whichever sections ran."""
    out: dict[str, tuple[float, str]] = {}
    e2e = res.get("e2e")
    if e2e:
        b = e2e["bulkexport"]
        out["cpu_ms_per_pair"] = (b["cpu_ms_per_pair"], f"{b['cpu_ms_per_pair']:.3f} ms ({e2e['_pairs']:,} pairs)")
        peers = {k: v["rps"] for k, v in e2e.items() if k in ("requests", "aiohttp", "dlt")}
        if peers:
            best = max(peers, key=peers.__getitem__)
            x = b["rps"] / peers[best]
            out["x_best_peer"] = (x, f"{x:.2f}x ({b['rps']:,.0f} vs {best} {peers[best]:,.0f} req/s)")
    scale = res.get("scale")
    if scale:
        peak = max(r["peak_rss_mb"] for r in scale)
        out["peak_rss_mb"] = (peak, f"{peak:.0f} MB")
        if len(scale) > 1:
            g = scale[-1]["peak_rss_mb"] / scale[0]["peak_rss_mb"]
            out["rss_growth"] = (g, f"{g:.2f} ({scale[0]['pairs']:,} → {scale[-1]['pairs']:,} pairs: "
                                    f"{scale[0]['peak_rss_mb']:.0f} → {scale[-1]['peak_rss_mb']:.0f} MB)")  # fmt: skip
    lat = res.get("latency")
    if lat:
        x = lat["bulkexport"]["rps"] / lat["ceiling"]["rps"]
        out["x_ceiling_50ms"] = (x, f"{x:.2f}x ({lat['bulkexport']['rps']:,.0f} vs {lat['ceiling']['rps']:,.0f} req/s)")
    p = res.get("paced")
    if p and p["steady_cpu_share"] is not None:
        pct = p["steady_cpu_share"] * 100
        out["paced_cpu_pct"] = (pct, f"{pct:.2f} % (whole process {p['cpu'] / p['wall'] * 100:.2f} %)")
    return out


def targets_table(res: dict[str, Any]) -> str:
    values = target_values(res)
    rows = []
    for t in TARGETS:
        if t.key in values:
            value, text = values[t.key]
            verdict = "PASS" if t.ok(value, t.limit) else "MISS"
        else:
            text, verdict = "not run", ""
        rows.append((t.measure, t.target, text, verdict, t.conditions))
    return table(("target", "goal", "measured", "result", "conditions"), rows)


def e2e_table(e2e: dict[str, Any], title: str) -> str:
    ref = e2e["bulkexport"]["rps"]
    rows = []
    for kind in ("bulkexport", "requests", "aiohttp", "dlt", "ceiling"):
        r = e2e.get(kind)
        if not r:
            continue
        o = r["out"]
        rows_per_pair = ""
        if "stats_rows" in o:
            rows_per_pair = f"{(o['stats_rows'] + o['totals_rows']) / r['pairs']:.1f}"
        elif "rows" in o:
            rows_per_pair = f"{sum(o['rows'].values()) / r['pairs']:.1f} (dlt tables)"
        rows.append((_PEER_NAMES[kind], str(r["runs"]), f"{r['wall']:.2f}", f"{r['rps']:,.0f}",
                     f"{ref / r['rps']:.2f}x", f"{r['user']:.2f} + {r['sys']:.2f}", f"{r['cpu_ms_per_pair']:.3f}",
                     f"{r['peak_rss_mb']:.0f}", rows_per_pair, f"{r['server_cpu_pct']:.0f} %"))  # fmt: skip
    head = ("client (whole process)", "runs", "wall s", "req/s", "bulkexport is", "user + sys s", "CPU ms/pair",
            "peak RSS MB", "rows/pair", "simulator CPU")  # fmt: skip
    missing = e2e.get("_missing") or []
    note = f"\n(not installed, not run: {', '.join(missing)})" if missing else ""
    b = e2e["bulkexport"]["out"]
    if "wall_seconds" in b:
        note += (f"\nbulkexport's own summary (last run): export {b['wall_seconds']:.2f} s of the process's "
                 f"wall, at most {b['max_in_flight']} requests in flight, {b['retries']} retries")  # fmt: skip
    return f"{title}\n{table(head, rows)}{note}"


def stages_table(s: dict[str, Any]) -> str:
    us = s["us"]
    rows = [(name, what, f"{us[name]:.1f}") for name, what in _STAGES]
    if s["flatten_includes_parse"]:
        taken = f"the C reader took {s.get('read_from_bytes', 0):,} of {s['responses']:,} bodies"
        replaced = "for comparison: orjson.loads alone, which the C reader replaces"
        rows[:2] = [
            ("parse + flatten", f"Flattener.add from the body's bytes ({taken})", f"{us['flatten']:.1f}"),
            ("  (orjson.loads)", replaced, f"{us['parse']:.1f}"),
        ]
        total = us["flatten"] + us["build"] + us["stage"] + us["publish"]
    else:
        total = sum(us[n] for n, _ in _STAGES)
    rows.append(("total", "body to published Parquet", f"{total:.1f}"))
    rows.append(("straightforward", "orjson.loads + a dict per row + from_pylist every build (no write)",
                 f"{us['baseline']:.1f}"))  # fmt: skip
    title = (f"per stage, µs per typical response ({s['responses']} distinct bodies of {s['body_kb']:.1f} KB, "
             f"{s['rows_per_response']:.0f} rows each; stage and publish over {s['writer_responses']:,} "
             f"responses in {s['checkpoints']} checkpoints, {s['files']} files, "
             f"{s['parquet_bytes_per_row']:.1f} B/row)")  # fmt: skip
    return f"{title}\n{table(('stage', 'what', 'µs/response'), rows)}"


def scale_table(scale: list[dict[str, Any]]) -> str:
    rows = []
    for r in scale:
        rows.append((f"{r['pairs']:,}", f"{r['wall']:.1f}", f"{r['pairs'] / r['wall']:,.0f}",
                     f"{r['cpu'] / r['pairs'] * 1000:.3f}", f"{r['peak_rss_mb']:.0f}",
                     f"{r['rss_first_half_mb'] or 0:.0f} / {r['rss_second_half_mb'] or 0:.0f}",
                     f"{(r['stats_rows'] + r['totals_rows']) / r['pairs']:.1f}"))  # fmt: skip
    head = ("pairs", "wall s", "req/s", "CPU ms/pair", "peak RSS MB", "RSS max 1st / 2nd half MB", "rows/pair")
    return "scale: bulkexport CLI over a generated pairs CSV (ordinary simulator pairs), 0 ms\n" + table(head, rows)


def paced_table(p: dict[str, Any]) -> str:
    def row(name: str, r: dict[str, Any]) -> tuple[str, ...]:
        steady = r["steady_cpu_share"]
        return (name, f"{r['requests']:,}", f"{r['wall']:.1f}", f"{r['requests'] / r['wall']:.1f}",
                f"{steady * 100:.2f} %" if steady is not None else "n/a", f"{r['cpu'] / r['wall'] * 100:.2f} %",
                f"{r['cpu']:.2f}", f"{r['peak_rss_mb']:.0f}")  # fmt: skip

    rows = [row("bulkexport CLI (a second of the pace at once, at most 64)", p)]
    raw = p.get("raw", {})
    for batch, r in sorted(raw.items(), key=lambda kv: int(kv[0])):  # keys are strings once through JSON
        n = int(batch)
        every = f"{n / DEFAULT_PACE * 1000:.3g} ms"
        rows.append(row(f"raw aiohttp loop, {'1 start' if n == 1 else n} every {every}", r))
    head = ("client (whole process)", "requests", "wall s", "achieved req/s", "CPU steady", "CPU whole process",
            "CPU s", "peak RSS MB")  # fmt: skip
    return "paced: the default limit (--reserve 0), simulator at 250,000/h and 50 ms\n" + table(head, rows)


def render(res: dict[str, Any]) -> str:
    parts = []
    if res.get("smoke"):
        parts.append("(--smoke: tiny sizes; the verdicts below mean nothing)")
    parts.append("targets (benchmarks/targets.py)\n" + targets_table(res))
    for key, ms in (("e2e", 0), ("latency", 50)):
        if res.get(key):
            parts.append(e2e_table(res[key], f"end to end, {ms} ms latency, {res[key]['_pairs']:,} typical pairs"))
    if res.get("stages"):
        parts.append(stages_table(res["stages"]))
    if res.get("scale"):
        parts.append(scale_table(res["scale"]))
    if res.get("paced"):
        parts.append(paced_table(res["paced"]))
    return "\n\n".join(parts)
