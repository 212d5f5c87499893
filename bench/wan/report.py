#!/usr/bin/env python3
"""Turns bench/run's results (one JSON object per measured case) into BENCHMARKS.md and a
PNG bar chart (gnuplot).

    python3 bench/wan/report.py --results results.jsonl --meta meta.json \
        --output BENCHMARKS.md --chart bench/wan/chart.png

A run of some workloads only can keep the other rows of an earlier full run
(`--carry RESULTS --carry-meta META`): they are marked and say which run they come from.
`--modes-before RESULTS` adds issue 21's table: the write workloads in an earlier run
(before write-back was the default) next to this run's, each with the raw client and the
peers of its own run.

Every figure is the median of the successful runs of a (server, workload, tool). A ratio
is s3vol's speed divided by the other tool's speed, so above 1 means s3vol is faster,
whatever the unit (for times: the other's time / s3vol's time).
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from collections import defaultdict

# id: (label, unit, higher_is_better)
WORKLOADS = {
    "seq1": ("Sequential read, 1 reader, cold", "MiB/s", True),
    "seq1-warm": ("Re-read of that file, same mount (warm)", "MiB/s", True),
    "seq1-remount": ("Re-read of that file after a remount (warm: the local caches only)", "MiB/s", True),
    "seq1-second": ("Sequential read on a second machine (its own empty local caches; the file read once on another mount before)", "MiB/s", True),
    "seq4": ("Sequential read, 4 readers of the same file, cold (aggregate)", "MiB/s", True),
    "rand1": ("Random 256 KiB reads, 1 reader, cold", "MiB/s", True),
    "rand4": ("Random 256 KiB reads, 4 readers, cold (aggregate)", "MiB/s", True),
    "ttfb-big": ("Time to first byte (open + read 1 B), big file", "ms", False),
    "ttfb-small": ("Time to first byte (open + read 1 B), 4 KiB file", "ms", False),
    "write": ("Sequential write, until in the bucket", "MiB/s", True),
    "close": ("close() of a new 1-byte file (median)", "ms", False),
    "create": ("Create small files of 4-64 KiB, until in the bucket", "s", False),
    "cp": ("cp -r of the geesefs tree, until in the bucket", "s", False),
    "rm": ("rm -r of that tree, until gone from the bucket", "s", False),
    "untar": ("Untar of a source tarball, until in the bucket", "s", False),
    "ls": ("ls -l of a directory of many files", "s", False),
    "find": ("find over a tree", "s", False),
    "model-file": ("Model load: safetensors safe_open, tensors in file order, cold", "MiB/s", True),
    "model-file-remount": ("Model load, file order, after a remount (warm)", "MiB/s", True),
    "model-shuffled": ("Model load: safetensors safe_open, tensors in shuffled order, cold", "MiB/s", True),
    "model-shuffled-remount": ("Model load, shuffled order, after a remount (warm)", "MiB/s", True),
    "model-4proc": ("Model load: 4 processes loading one file at once, cold (aggregate)", "MiB/s", True),
    "model-read": ("Model load: one sequential read of the file (as torch.load), cold", "MiB/s", True),
    "dataload8": ("Data loading: 8 workers, random order, first epoch", "s", False),
    "dataload8-epoch2": ("Data loading: 8 workers, second epoch (same mount)", "s", False),
    "dataload8-remount": ("Data loading: 8 workers, an epoch after a remount (warm)", "s", False),
    "dataload32": ("Data loading: 32 workers, random order, first epoch", "s", False),
    "dataload32-epoch2": ("Data loading: 32 workers, second epoch (same mount)", "s", False),
    "dataload8-1m": ("Data loading, files of 1,000 KiB: 8 workers, random order, first epoch", "s", False),
    "dataload8-1m-epoch2": ("Data loading, files of 1,000 KiB: 8 workers, second epoch (same mount)", "s", False),
    "dataload32-1m": ("Data loading, files of 1,000 KiB: 32 workers, random order, first epoch", "s", False),
    "dataload32-1m-epoch2": ("Data loading, files of 1,000 KiB: 32 workers, second epoch (same mount)", "s", False),
    "ckpt": ("Checkpoint save: write ckpt.tmp, fsync, rename to ckpt, until in the bucket", "s", False),
}

TOOLS = ["s3vol", "s3vol-shared", "s3vol-before", "s3vol-onclose", "rclone-full", "rclone", "s3fs", "mount-s3", "raw"]
TOOL_LABELS = {
    "s3vol": "s3vol (default: write-back)",
    "s3vol-before": "s3vol, an earlier build (S3VOL_BEFORE)",
    "s3vol-shared": "s3vol --shared-cache (tier on the near side of the link)",
    "s3vol-onclose": "s3vol --upload-mode on-close",
    "rclone-full": "rclone mount --vfs-cache-mode full",
    "rclone": "rclone mount (default: cache off)",
    "s3fs": "s3fs",
    "mount-s3": "mount-s3 1.24 (Mountpoint for Amazon S3)",
    "raw": "raw aws-sdk (baseline)",
}
PEERS = ["rclone-full", "rclone", "s3fs", "mount-s3"]
# The workloads s3vol's upload mode changes (the others run only with the default mode).
WRITE_WORKLOADS = {"write", "close", "create", "cp", "rm", "untar", "ckpt"}

# S3 operation names, abbreviated in the request tables.
OPERATIONS = {
    "ListObjectsV2": "LIST",
    "ListObjects": "LIST1",
    "HeadObject": "HEAD",
    "GetObject": "GET",
    "PutObject": "PUT",
    "UploadPart": "PART",
    "CreateMultipartUpload": "MPU",
    "CompleteMultipartUpload": "DONE",
    "DeleteObject": "DEL",
    "DeleteObjects": "DELN",
    "CopyObject": "COPY",
    "HeadBucket": "HEADB",
}


def load(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def by_mode(results):
    """Results of a run made before write-back was s3vol's default (issue 21), whose
    tools were `s3vol` (close waits for the upload) and `s3vol-async`
    (`--upload-on-close false`), renamed mode for mode: `s3vol-onclose` and `s3vol`.
    Reads do not depend on the mode and keep their name. Newer runs are returned as
    they are."""
    if not any(r["tool"] == "s3vol-async" for r in results):
        return results
    renamed = []
    for record in results:
        tool = record["tool"]
        if record["workload"] in WRITE_WORKLOADS and tool in ("s3vol", "s3vol-async"):
            record = dict(record, tool="s3vol-onclose" if tool == "s3vol" else "s3vol")
        renamed.append(record)
    return renamed


def carried(results, earlier):
    """The records of `earlier` for the (server, workload) pairs `results` does not have."""
    measured = {(r["server"], r["workload"]) for r in results}
    # s3vol's write figures from before write-back was the default are not those of its
    # modes now: such a carried row shows the peers and the raw client only.
    old_modes = any(r["tool"] == "s3vol-async" for r in earlier)
    return [dict(r, carried=True) for r in by_mode(earlier)
            if (r["server"], r["workload"]) not in measured
            and not (old_modes and r["workload"] in WRITE_WORKLOADS and r["tool"].startswith("s3vol"))]


class Cell:
    """The runs of one (server, workload, tool)."""

    def __init__(self):
        self.values = []
        self.failures = []  # (status, note, timeout)
        self.records = []

    @property
    def median(self):
        return statistics.median(self.values) if self.values else None

    def failure(self):
        return self.failures[0] if self.failures and not self.values else None

    @property
    def carried(self):
        return any(r.get("carried") for r in self.records)


def collect(results):
    cells = defaultdict(Cell)
    for record in results:
        cell = cells[(record["server"], record["workload"], record["tool"])]
        cell.records.append(record)
        if record["status"] == "ok":
            cell.values.append(float(record["value"]))
        else:
            cell.failures.append((record["status"], record.get("note", ""), record.get("timeout_s")))
    return cells


def fmt(value, unit):
    if value is None:
        return "—"
    if unit == "MiB/s":
        return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
    if unit == "ms":
        # Under 1 ms (a close() answered locally) the hundredths matter.
        return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def cell_text(cell, unit):
    if cell is None:
        return "—"
    failure = cell.failure()
    if failure:
        status, _, timeout = failure
        if status == "timeout":
            return f"**timeout** (> {timeout} s)"
        return "not run (previous phase timed out)" if status == "not run" else "**failed**"
    text = fmt(cell.median, unit)
    if cell.failures:
        text += " (some runs failed)"
    return text


def speed_ratio(mine, other, higher_better):
    if mine is None or other is None or mine == 0 or other == 0:
        return None
    return mine / other if higher_better else other / mine


def ratio_text(cells, server, workload, tool, other):
    """s3vol's (or s3vol-onclose's) speed over `other`'s, or a bound when `other` timed out."""
    _, unit, higher = WORKLOADS[workload]
    mine = cells.get((server, workload, tool))
    theirs = cells.get((server, workload, other))
    if mine is None or theirs is None:
        return "—"
    if mine.median is None:
        # s3vol timed out: its speed is below what the timeout allows.
        failure = mine.failure()
        if failure and failure[0] == "timeout" and unit == "s" and failure[2] and theirs.median is not None:
            return f"< {theirs.median / float(failure[2]):.2f}"
        return "—"
    if theirs.median is not None:
        ratio = speed_ratio(mine.median, theirs.median, higher)
        return "—" if ratio is None else f"{ratio:.2f}"
    failure = theirs.failure()
    if failure and failure[0] == "timeout" and unit == "s" and failure[2]:
        return f"> {float(failure[2]) / mine.median:.1f}"
    if failure and failure[0] == "failed":
        return "n/a (peer failed)"
    return "—"


def requests_text(record):
    counts = dict(record.get("requests") or {})
    # The harness's own polling (until the bucket holds the data) is not the tool's.
    for op, n in (record.get("harness_requests") or {}).items():
        counts[op] = counts.get(op, 0) - n
    counts = {op: n for op, n in counts.items() if n > 0}
    if not counts:
        return "—"
    total = sum(counts.values())
    parts = [f"{n} {OPERATIONS.get(op, op)}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return f"{total}: " + ", ".join(parts)


def median_record(cell):
    """The successful run whose value is the median (or nearest to it)."""
    ok = [r for r in cell.records if r["status"] == "ok"]
    if not ok:
        return cell.records[0] if cell.records else None
    return min(ok, key=lambda r: abs(float(r["value"]) - cell.median))


def server_table(cells, server, workloads, tools, sizes):
    lines = []
    header = ["Workload", "unit"] + [TOOL_LABELS[t] for t in tools]
    ratio_columns = [p for p in PEERS + ["raw"] if p in tools]
    header += [f"s3vol vs {p}" for p in ratio_columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for workload in workloads:
        if not any((server, workload, tool) in cells for tool in tools):
            continue
        label, unit, higher = WORKLOADS[workload]
        label = f"{label}{sizes.get(workload, '')}"
        if any(c.carried for (srv, w, _), c in cells.items() if srv == server and w == workload):
            label += " †"
        row = [label, unit + (" ↑" if higher else " ↓")]
        for tool in tools:
            row.append(cell_text(cells.get((server, workload, tool)), unit))
        for other in ratio_columns:
            text = ratio_text(cells, server, workload, "s3vol", other)
            if (server, workload, "s3vol-onclose") in cells:
                text += f" (on-close {ratio_text(cells, server, workload, 's3vol-onclose', other)})"
            if other == "raw" and (workload == "seq1-warm" or workload.endswith("-remount")):
                text = "— (no network)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def request_table(cells, server, workloads, tools):
    lines = [
        "| Workload | " + " | ".join(TOOL_LABELS[t] for t in tools if t != "raw") + " | raw |",
        "|" + "---|" * (len([t for t in tools if t != "raw"]) + 2),
    ]
    for workload in workloads:
        if not any((server, workload, tool) in cells for tool in tools):
            continue
        row = [WORKLOADS[workload][0]]
        for tool in [t for t in tools if t != "raw"] + ["raw"]:
            cell = cells.get((server, workload, tool))
            if cell is None:
                row.append("—")
                continue
            record = median_record(cell)
            text = requests_text(record) if record else "—"
            if record and record.get("s3vol_counters"):
                counters = record["s3vol_counters"]
                text += " · status: " + ", ".join(f"{k} {v}" for k, v in counters.items())
            if record and record["status"] != "ok":
                text += f" ({record['status']})"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def failures_section(cells, server):
    lines = []
    for (srv, workload, tool), cell in sorted(cells.items()):
        if srv != server:
            continue
        mark = " †" if cell.carried else ""
        for status, note, _ in cell.failures:
            lines.append(f"- {WORKLOADS[workload][0]}{mark} — {TOOL_LABELS[tool]}: **{status}**: "
                         f"{note.strip() or '(no message)'}")
    return lines


def chart(cells, server, workloads, tools, path, meta):
    """Grouped bars: each tool's speed relative to the raw baseline (1 = raw aws-sdk),
    log scale. Warm reads (same mount or after a remount) are compared to the cold raw rate."""
    shown = [t for t in tools if t != "raw"]
    rows = []
    for workload in workloads:
        _, unit, higher = WORKLOADS[workload]
        base_workload = "seq1" if workload == "seq1-warm" else workload.removesuffix("-remount").removesuffix("-second")
        raw = cells.get((server, base_workload, "raw"))
        if raw is None or raw.median is None:
            continue
        values = []
        for tool in shown:
            cell = cells.get((server, workload, tool))
            ratio = speed_ratio(cell.median, raw.median, higher) if cell and cell.median is not None else None
            values.append("?" if ratio is None else f"{ratio:.4f}")
        rows.append((workload, values))
    if not rows:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.txt")
        with open(data, "w") as handle:
            handle.write("workload " + " ".join(f'"{TOOL_LABELS[t]}"' for t in shown) + "\n")
            for workload, values in rows:
                handle.write(f'"{workload}" ' + " ".join(values) + "\n")
        link = meta["link"]
        title = (
            f"Speed relative to raw aws-sdk on the same link (1 = raw; higher is faster; log scale)\\n"
            f"server {server}; link {link['delay_ms_each_way']} ms each way (RTT {link.get('rtt_ms', '?')} ms), "
            f"{link['rate']}; median of up to {meta['runs']} runs; missing bar = failed or timed out"
        )
        colors = ["#1f77b4", "#7fb2e5", "#d62728", "#ff9896", "#2ca02c", "#9467bd"]
        plots = []
        for i, _ in enumerate(shown):
            plots.append(f"'{data}' using {i + 2}:xtic(1) title columnheader({i + 2}) lc rgb '{colors[i % len(colors)]}'")
        script = f"""
set terminal pngcairo size 1600,800 font 'DejaVu Sans,11'
set output '{path}'
set title "{title}"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set logscale y
set yrange [0.005:*]
set grid ytics
set ylabel 'speed / raw aws-sdk speed'
set xtics rotate by -25 noenhanced
set key top right noenhanced
set datafile missing '?'
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2 lc rgb 'black'
plot {', '.join(plots)}
"""
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    return True


def before_after_table(before, after, server, workloads):
    """s3vol's figures in an earlier run (`--before`) next to this run's, with the ratio to
    the raw baseline of each run (the machine's load differs between runs; the ratio to raw
    measured in the same run is the fairer comparison)."""
    rows = [
        "| Workload | unit | s3vol before | s3vol after | vs raw before → after | on-close before | on-close after "
        "| on-close vs raw before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(cells, tool, workload):
        _, unit, higher = WORKLOADS[workload]
        mine, raw = cells.get((server, workload, tool)), cells.get((server, workload, "raw"))
        value = speed_ratio(mine.median if mine else None, raw.median if raw else None, higher)
        return "—" if value is None else f"{value:.2f}"

    for workload in workloads:
        label, unit, higher = WORKLOADS[workload]
        arrow = "↑" if higher else "↓"
        row = [label, f"{unit} {arrow}"]
        for tool in ("s3vol", "s3vol-onclose"):
            old, new = before.get((server, workload, tool)), after.get((server, workload, tool))
            if old is None and new is None:
                row += ["—", "—", "—"]
                continue
            row += [cell_text(old, unit), cell_text(new, unit),
                    f"{ratio(before, tool, workload)} → {ratio(after, tool, workload)}"]
        rows.append("| " + " | ".join(row) + " |")
    return rows


# The rows of issue 21's table, and how each run names its s3vol modes.
MODES_WORKLOADS = ["close", "create", "cp", "rm", "untar", "write"]
MODES_SHORT = {
    "close": "close() 1 B, ms ↓",
    "create": "small files, s ↓",
    "cp": "cp -r, s ↓",
    "rm": "rm -r, s ↓",
    "untar": "untar, s ↓",
    "write": "1 GiB write, MiB/s ↑",
}


def modes_table(before, before_meta, after, meta, server):
    """Issue 21: the write workloads before write-back was the default and after, each
    s3vol mode next to the raw client and the peers of its own run (`before` is taken
    as it was recorded: its `s3vol` waited for the upload at close)."""
    def version(m):
        text = m["versions"]["s3vol"]
        return text[text.find("(git ") + 5:-1] if "(git " in text else text

    runs = [
        (f"before: {before_meta['date']}, `{version(before_meta)}`", before, [
            ("s3vol", "s3vol, default then: close() waits for the upload"),
            ("s3vol-async", "s3vol --upload-on-close false (close() returned before the journal record)"),
        ]),
        (f"after: {meta['date']}, `{version(meta)}`", after, [
            ("s3vol", "**s3vol, default now: write-back** (close() returns once journaled)"),
            ("s3vol-onclose", "s3vol --upload-mode on-close (close() waits for the upload)"),
        ]),
    ]
    workloads = [w for w in MODES_WORKLOADS if any((server, w, t) in after for t in TOOLS)]
    lines = ["| run | tool | " + " | ".join(MODES_SHORT[w] for w in workloads) + " |",
             "|" + "---|" * (len(workloads) + 2)]
    for run_label, cells, s3vol_tools in runs:
        others = [(t, TOOL_LABELS[t]) for t in PEERS + ["raw"]]
        others[-1] = ("raw", "raw aws-sdk (baseline: small files as 32 PUTs in flight)")
        for tool, label in s3vol_tools + others:
            if not any((server, w, tool) in cells for w in workloads):
                continue
            row = [run_label, label]
            for workload in workloads:
                cell = cells.get((server, workload, tool))
                row.append("—" if cell is not None and cell.carried else cell_text(cell, WORKLOADS[workload][1]))
            lines.append("| " + " | ".join(row) + " |")
    return lines


def targets(cells, server):
    """Issue 21's targets with the defaults, checked against this run."""
    lines = []
    def median(workload, tool):
        cell = cells.get((server, workload, tool))
        return cell.median if cell else None

    close = median("close", "s3vol")
    if close is not None:
        lines.append(f"- close() of a 1-byte file under 1 ms: {fmt(close, 'ms')} ms — "
                     + ("**met**" if close < 1 else "**missed**"))
    for workload in ("create", "cp", "untar", "rm"):
        mine, raw = median(workload, "s3vol"), median(workload, "raw")
        if (server, workload, "s3vol") not in cells:
            continue
        label = WORKLOADS[workload][0]
        if mine is None:
            lines.append(f"- {label}: s3vol did not finish — **missed**")
            continue
        at_raw = raw is not None and mine <= raw
        behind = []
        for peer in PEERS:
            theirs = median(workload, peer)
            if (server, workload, peer) in cells and theirs is not None and theirs <= mine:
                behind.append(f"{TOOL_LABELS[peer]} {fmt(theirs, 's')} s")
        raw_text = f"raw {fmt(raw, 's')} s" if raw is not None else "raw —"
        verdict = "**met**" if at_raw and not behind else "**missed**"
        peers_text = "ahead of every peer" if not behind else "not ahead of " + ", ".join(behind)
        lines.append(f"- {label}: {fmt(mine, 's')} s against {raw_text} "
                     f"({'at or below' if at_raw else 'above'} raw), {peers_text} — {verdict}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True)
    parser.add_argument("--meta", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--chart", required=True)
    parser.add_argument("--elapsed", type=int, default=None)
    parser.add_argument("--notes", default=None, help="hand-written findings appended to the report, if the file exists")
    parser.add_argument("--before", default=None, help="results of an earlier run, for a before/after table of s3vol")
    parser.add_argument("--previous", default=None, help="results of the previous full run, for a second such table")
    parser.add_argument("--carry", default=None,
                        help="results of an earlier full run: the rows this run did not measure come from it (marked)")
    parser.add_argument("--carry-meta", default=None, help="the meta of the --carry run")
    parser.add_argument("--modes-before", default=None,
                        help="results of a run before write-back was the default, for issue 21's table")
    parser.add_argument("--modes-before-meta", default=None, help="the meta of the --modes-before run")
    args = parser.parse_args()

    results = load(args.results)
    with open(args.meta) as handle:
        meta = json.load(handle)
    carry_meta = None
    if args.carry:
        extra = carried(results, load(args.carry))
        with open(args.carry_meta) as handle:
            carry_meta = json.load(handle)
        results = results + extra
    cells = collect(results)
    servers = list(dict.fromkeys(r["server"] for r in results))
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
    tools = [t for t in TOOLS if any(r["tool"] == t for r in results)]
    sizes_meta = meta["sizes"]
    big = f"{int(sizes_meta['big_mib']) // 1024} GiB" if int(sizes_meta["big_mib"]) >= 1024 else f"{sizes_meta['big_mib']} MiB"
    sizes = {
        "seq1": f", {big}",
        "seq1-remount": f", {big}",
        "seq1-second": f", {big}",
        "seq4": f", {big}",
        "rand1": f" over {big}, {sizes_meta['random_seconds']} s",
        "rand4": f" over {big}, {sizes_meta['random_seconds']} s",
        "write": f", {big}",
        "ttfb-big": f" ({big})",
        "create": f": {int(sizes_meta['small_files']):,} files",
        "cp": f": {sizes_meta['tree']}",
        "untar": f" ({sizes_meta['tarball'].split(':')[0]})",
        "ls": f": {int(sizes_meta['ls_files']):,} files",
        "find": f": {sizes_meta['find']}",
    }
    if "model_mib" in sizes_meta:
        for w in ("model-file", "model-file-remount", "model-shuffled", "model-shuffled-remount", "model-4proc",
                  "model-read"):
            sizes[w] = f", {sizes_meta['model_mib']} MiB of 4 MiB tensors"
        for w in ("dataload8", "dataload8-epoch2", "dataload8-remount", "dataload32", "dataload32-epoch2"):
            sizes[w] = f": {int(sizes_meta['data_files']):,} files of 100 KiB in 100 directories"
        if "data_1m_files" in sizes_meta:
            for w in ("dataload8-1m", "dataload8-1m-epoch2", "dataload32-1m", "dataload32-1m-epoch2"):
                sizes[w] = f": {int(sizes_meta['data_1m_files']):,} files in 100 directories"
        sizes["ckpt"] = f": {sizes_meta['ckpt_mib']} MiB"

    chart_ok = chart(cells, servers[0], workloads, tools, args.chart, meta) if servers else False
    link = meta["link"]
    versions = meta["versions"]
    out = []
    out.append("# s3vol benchmarks: a WAN-like link, the peers side by side")
    out.append("")
    out.append(
        "Made by `sudo bench/run`" + (" --quick" if meta["quick"] else "") + f" on {meta['date']}"
        + (f" in {args.elapsed // 60} min" if args.elapsed else "")
        + f" ({meta['machine']['cpus']} CPUs, {meta['machine']['memory_gib']} GiB, load average "
        f"{meta['machine'].get('load_average_at_start', '?')} at the start: other work shared the machine)"
        + (f"; the workloads of this run: {meta['workloads']}" if meta.get("workloads") else "")
        + ". "
        "The S3 server runs in a network namespace; the link to it adds a one-way delay and a rate cap in "
        "each direction (below); "
        "every tool mounts the bucket from the host side, so every request crosses the link. "
        "Each case runs on a fresh mount after `echo 3 > /proc/sys/vm/drop_caches` (the warm re-read "
        "reuses the mount of the cold read). Writes are timed until the bucket holds the data "
        "(polled with HEAD/LIST by the harness; the big file by a poller started with the writer that "
        "asks every 20 ms), so asynchronous uploaders are timed to the end; "
        f"the time at which the writing program returned is in `{meta.get('results_file', 'bench/wan/results-last.jsonl')}` "
        "(`writer_s`)."
    )
    out.append("")
    if carry_meta:
        out.append(
            f"**†** Rows marked † were not measured by this run: they come from the full run of "
            f"{carry_meta['date']} (binary {carry_meta['versions']['s3vol']}, load average "
            f"{carry_meta['machine'].get('load_average_at_start', '?')} at its start), the figures and ratios "
            "of that run. Reads do not depend on s3vol's upload mode, so that run's `s3vol` (then waiting "
            "for the upload at close) measured them as the default does now; a carried write row leaves "
            "s3vol out (its modes have changed since)."
        )
        out.append("")
    out.append(f"**Ratios** are s3vol's speed divided by the other's (> 1: s3vol faster; for times, their "
               f"time / s3vol's time); `(on-close …)` is the same for `s3vol --upload-mode on-close`. "
               f"↑ higher is better, ↓ lower is better. Figures are medians of up to {meta['runs']} runs; a case "
               f"slower than {meta['slow_s']} s runs once; a case over {meta['timeout_s']} s is stopped and "
               f"reported as a timeout; a failure is reported, never hidden.")
    out.append("")
    out.append("## Link and versions")
    out.append("")
    def mbit(name):
        value = link.get(name)
        return "?" if value is None else f"{value:.0f}"

    for when in ("start", "end"):
        sync = meta["machine"].get(f"fdatasync_at_{when}")
        if sync:
            out.append(f"- disk of the cache directories, fdatasync(2) of a 100-byte append at the {when} of the run: "
                       f"median {sync['median_ms']} ms (p10 {sync['p10_ms']}, p90 {sync['p90_ms']}, max {sync['max_ms']}); "
                       "with write-back, s3vol's journal pays one within a second of a burst of closes, in the background")
    if meta["machine"].get("disk_read_mib_s"):
        out.append(f"- that disk's cold sequential read (dd bs=1M of a file of the big file's size, page cache "
                   f"dropped): {meta['machine']['disk_read_mib_s']} MiB/s, the best a warm read after a remount can do")
    out.append(f"- link: {link['qdisc']}; measured RTT {link.get('rtt_ms')} ms (ping); iperf3 (TCP, 5 s) download "
               f"{mbit('download_mbit')} Mbit/s with 1 stream, {mbit('download_4_streams_mbit')} with 4; upload "
               f"{mbit('upload_mbit')} with 1, {mbit('upload_4_streams_mbit')} with 4")
    if link.get("tls"):
        out.append("- the S3 endpoint is https (`--tls`: the bench server with a certificate of the test CA, "
                   "`tests/it/tls/`; TLS 1.3 with rustls on the server): s3vol and mount-s3 trust the CA with "
                   "`--ca-bundle`, rclone with `--ca-cert`, the raw client the same CA; s3fs verifies nothing "
                   "(`no_check_certificate`: it has no CA option)")
    for name, version in versions.items():
        out.append(f"- {name}: {version}")
    out.append(f"- sizes: big file {big}; random reads for {sizes_meta['random_seconds']} s each; "
               f"{int(sizes_meta['small_files']):,} small files; tree {sizes_meta['tree']}; ls of "
               f"{int(sizes_meta['ls_files']):,} files; find over {sizes_meta['find']}; tarball {sizes_meta['tarball']}; "
               f"close latency over {sizes_meta['close_files']} files")
    out.append("- tools use their defaults but for the endpoint, path-style addressing and the credentials; "
               "s3vol and rclone get a fresh cache directory per mount")
    out.append("- raw baselines (`examples/bench_client.rs`, s3vol's own aws-sdk client `S3Store` without FUSE): "
               "reads are 8 MiB ranged GETs, 8 in flight (4 readers: the object 4 times over); random reads are "
               "256 KiB ranged GETs, 1 or 4 in flight; first byte is a GET on a warm connection; the write is a "
               "multipart upload of 16 MiB parts, 8 in flight; close is one PutObject of 1 byte; small files, "
               "the tree and the untarred sources are PutObject with 32 in flight; rm is a listing then "
               "DeleteObject with 32 in flight; ls is the delimited listing; find is the flat listing of the tree")
    out.append("")
    for server in servers:
        server_label = {
            "s3s-fs": "s3s-fs 0.14.1 (objects as files on disk), a check",
            "bench": "s3vol's example server `examples/bench_server.rs` (in memory)",
        }.get(server, server)
        out.append(f"## Results: {server_label}")
        out.append("")
        if server == servers[0] and chart_ok:
            out.append(f"![chart]({os.path.relpath(args.chart, os.path.dirname(os.path.abspath(args.output)))})")
            out.append("")
        out.extend(server_table(cells, server, workloads, tools, sizes))
        out.append("")
        out.append(f"### Requests received by the server ({server}, the median run)")
        out.append("")
        out.append("Counted at the server for every tool (s3s-fs: its per-request log; the example server: its "
                   "counters); for s3vol, `status:` gives s3vol's own counters (`s3vol status --json`). "
                   "The harness's own polling (HEAD/LIST until the bucket holds the data) is subtracted. "
                   "A case that times out has its counts in the failure list. cp and rm are one case (cp -r, then "
                   "rm -r on the same mount): their counts are those of both; so are seq1 and the warm re-read's.")
        out.append("")
        out.extend(request_table(cells, server, workloads, tools))
        out.append("")
        failures = failures_section(cells, server)
        if failures:
            out.append(f"### Failures and timeouts ({server})")
            out.append("")
            out.extend(failures)
            out.append("")
    if args.modes_before and os.path.exists(args.modes_before) and servers:
        with open(args.modes_before_meta) as handle:
            before_meta = json.load(handle)
        out.append(f"## Issue 21: write-back by default ({servers[0]})")
        out.append("")
        out.append(
            "The write workloads before and after write-back became s3vol's default. Before: the full run of "
            f"`bench/wan/{os.path.basename(args.modes_before)}`, whose default "
            "s3vol waited at close() for the upload, and whose `--upload-on-close false` returned from close() "
            "before the file was journaled. After: this run, whose default s3vol returns from close() once the "
            "file's bytes and journal record are on local disk (group-committed fdatasync) and uploads in the "
            "background, 64 at a time; `--upload-mode on-close` is the old default. Each s3vol mode sits next to "
            "the raw client and the peers of its own run. Times until the bucket holds every file (rm: until "
            "it holds none)."
        )
        out.append("")
        out.extend(modes_table(collect(load(args.modes_before)), before_meta, cells, meta, servers[0]))
        out.append("")
        checks = targets(cells, servers[0])
        if checks:
            out.append("Issue 21's targets with the defaults, in this run: 2,000 small files, cp -r, untar and rm -r at "
                       "or below the raw client's time (32 PUTs in flight) and ahead of every peer; close() of a 1-byte "
                       "file under 1 ms.")
            out.append("")
            out.extend(checks)
            out.append("")
    comparisons = [
        (args.before, "s3vol before and after the fixes",
         "Before: the run of `bench/wan/results-before.jsonl` (the binary before the fixes listed below, same "
         "harness and link, a more loaded machine). After: this run."),
        (args.previous, "s3vol in the previous full run and in this one",
         "Previous: the full run kept in `bench/wan/results-previous.jsonl` (the binary before the latest round of "
         "fixes, see the last round below). Now: this run."),
    ]
    for path, title, text in comparisons:
        if not (path and os.path.exists(path) and servers):
            continue
        out.append(f"## {title} ({servers[0]})")
        out.append("")
        if any(r["tool"] == "s3vol-async" for r in load(path)):
            text += (" Mode for mode: that run predates write-back as the default (issue 21); its default `s3vol`"
                     " (close waits for the upload) is in the on-close columns and its `--upload-on-close false`"
                     " (write-back, close() not waiting for the journal) in the s3vol columns.")
        if carry_meta:
            text += " Rows marked † in the main table are that earlier run's figures in the \"after\" columns."
        out.append(text + " The ratios to the raw baseline come from the same run as the figure.")
        out.append("")
        out.extend(before_after_table(collect(by_mode(load(path))), cells, servers[0], workloads))
        out.append("")
    if args.notes and os.path.exists(args.notes):
        with open(args.notes) as handle:
            out.append(handle.read().rstrip())
    with open(args.output, "w") as handle:
        handle.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
