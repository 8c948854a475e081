#!/usr/bin/env python3
"""Writes bench/RESULTS.md from a run's JSON (bench/results.json) and, when present, the instruction
counts of `run.py --callgrind` (bench/.work/callgrind.json): the machine, the exact command, the tables
run.py printed, and the figures against the benchmark issue's targets.

    python3 bench/results_md.py [--json bench/results.json] [--callgrind bench/.work/callgrind.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def fnum(v, digits=3, sign=False):
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(BENCH / "results.json"))
    ap.add_argument("--callgrind", default=str(BENCH / ".work" / "callgrind.json"))
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args()
    r = json.loads(Path(args.json).read_text())
    m = r["machine"]
    s = r["summary"]
    d = r["derived"]
    soak = r.get("soak") or {}
    mode = "Quick run: 1 repetition" if r["quick"] else f"Full run: {r['repetitions']} repetitions"
    lines = [
        "# Benchmark results",
        "",
        f"{mode} × {r['seconds']} s per phase (median, with min–max)"
        + (f", then a {soak['seconds']:.0f} s soak" if soak else "")
        + ". The uniapi column runs with auth, routing, billing (reserve → capture), rate-limit checks and",
        "request logs on, against SQLite, exactly as an operator runs it.",
        "",
        "## Machine",
        "",
        f"* {m['cpus']} vCPUs \"{m['cpu']}\", {m['memory']}, Linux {m['kernel']}, Python {m['python']}",
        f"* {m['wrk']}, {m['nginx']}, {m.get('oha') or 'no oha'}",
        f"* uniapi at git `{m['git']}`, release build (fat LTO, one codegen unit, mimalloc)",
        f"* Targets pinned to {r['pinning']['targets']}; wrk/oha, the sandbox upstream and the TTFB client "
        f"pinned to {r['pinning']['load generator + upstream']}",
        f"* load average at start {' '.join(m['loadavg_at_start'])}, at end {' '.join(m['loadavg_at_end'])}",
        "",
        "## Command",
        "",
        "```sh",
        r["command"],
        "```",
        "",
        f"(started {r['started']}, finished {r['finished']}; every raw run in `bench/results.json`; "
        "this file written by `python3 bench/results_md.py`)",
        "",
        r["markdown"].rstrip(),
        "",
    ]
    cg_path = Path(args.callgrind)
    if cg_path.exists():
        cg = json.loads(cg_path.read_text())
        u, n = cg["uniapi"], cg["nginx"]
        lines += [
            f"## Instructions per request (callgrind, `python3 bench/run.py --callgrind {cg['requests']}`, "
            f"git `{cg.get('git', '?')}`)",
            "",
            "Not a timing: counted instructions, repeatable whatever else the machine does.",
            "",
            "| | chat JSON | stream (16 chunks) | embeddings |",
            "|---|---|---|---|",
            *(f"| {who} | {c['chat_instructions_per_request']:,} | {c['stream_instructions_per_request']:,} | "
              f"{c['embed_instructions_per_request']:,} |" if "embed_instructions_per_request" in c else
              f"| {who} | {c['chat_instructions_per_request']:,} | {c['stream_instructions_per_request']:,} | — |"
              for who, c in (("uniapi", u), ("nginx proxy", n))),
            f"| ratio | {cg['chat_uniapi_vs_nginx']:.1f}× | {cg['stream_uniapi_vs_nginx']:.1f}× | "
            + (f"{cg['embed_uniapi_vs_nginx']:.1f}× |" if "embed_uniapi_vs_nginx" in cg else "— |"),
            "",
            "What each change bought is in `bench/README.md` (\"Instructions per request\").",
            "",
        ]
    su, sn = s["uniapi"], s.get("nginx", {})
    du, dn = d["uniapi"], d.get("nginx", {})

    def med(summary, key):
        v = summary.get(key)
        return v["median"] if isinstance(v, dict) else None

    def row(name, goal, value, nginx, met):
        return f"| {name} | {goal} | {value} | {nginx} | {'yes' if met else 'no'} |"

    p50, p99, ttfb = du.get("added_p50_ms_at_1000"), du.get("added_p99_ms_at_1000"), du.get("added_ttfb_ms")
    ratio = du.get("rps_c32_vs_nginx")
    rss128, peak = med(su, "rss_c128_mb"), med(su, "peak_rss_mb")
    lines += [
        "## Against the targets of the benchmark issue",
        "",
        "| target | goal | uniapi, this run | nginx proxy, this run | met? |",
        "|---|---|---|---|---|",
        row("added latency p50 @1000 req/s", "≤ 0.15 ms", f"{fnum(p50, 3, True)} ms",
            f"{fnum(dn.get('added_p50_ms_at_1000'), 3, True)} ms", p50 is not None and p50 <= 0.15),
        row("added latency p99 @1000 req/s", "≤ 1 ms", f"{fnum(p99, 3, True)} ms",
            f"{fnum(dn.get('added_p99_ms_at_1000'), 3, True)} ms", p99 is not None and p99 <= 1.0),
        row("closed-loop throughput c32 vs the nginx proxy", "≥ 0.50", fnum(ratio, 2), "1.00",
            ratio is not None and ratio >= 0.5),
        row("added time to first SSE byte", "≤ 0.3 ms", f"{fnum(ttfb, 3, True)} ms",
            f"{fnum(dn.get('added_ttfb_ms'), 3, True)} ms", ttfb is not None and ttfb <= 0.3),
        row("peak RSS at 128 connections", "≤ 40 MB",
            f"{fnum(rss128, 1)} MB during c128 ({fnum(peak, 1)} MB peak over the whole run)",
            f"{fnum(med(sn, 'rss_c128_mb'), 1)} MB", rss128 is not None and rss128 <= 40),
    ]
    if soak:
        lines.append(row("RSS flat over the soak", "flat",
                         f"{soak['rss_early_mb']} → {soak['rss_late_mb']} MB (growth {soak['growth_mb']} MB), "
                         f"{soak['requests']} requests, {soak['errors']} errors", "—", bool(soak.get("flat"))))
    peers = [p for p in ("litellm", "portkey") if p in s]
    if peers:
        u32 = med(su, "rps_c32")
        parts = []
        for p in peers:
            p32, p50 = med(s[p], "rps_c32"), d[p].get("added_p50_ms_at_200")
            if p32:
                parts.append(f"{p}: {p32:.0f} req/s at c32 (uniapi does {u32 / p32:.0f}× that), "
                             f"added p50 at 200 req/s {fnum(p50, 3, True)} ms")
        if parts:
            lines += ["", "Peers in the same run: " + "; ".join(parts) + ". The peers stay up (idle) on CPU 0 "
                      "while the other targets are measured, so their background work can take some of that "
                      "core from direct/nginx/uniapi; `--targets direct,nginx,uniapi` without `--with-peers` "
                      "measures the three alone."]
    if isinstance(r.get("skipped"), dict) and r["skipped"]:
        lines += ["", "Skipped or partly measured: "
                  + "; ".join(f"{k}: {v}" for k, v in r["skipped"].items()) + "."]
    cpu_u, cpu_n = med(su, "cpu_s_per_1k_c32"), med(sn, "cpu_s_per_1k_c32")
    lines += [
        "",
        "Read the throughput ratio with the caveat in `bench/README.md`: wrk and the sandbox upstream share "
        "CPU 1, which caps direct and the nginx proxy too"
        + (f"; by CPU seconds per 1,000 requests uniapi costs {cpu_u / cpu_n:.1f}× what nginx does (c32)."
           if cpu_u and cpu_n else "."),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
