#!/usr/bin/env python3
"""What a client did on the wire: reads `tcpdump -l -nn -tt -A` output of the plain-HTTP
S3 traffic on the benchmark link and prints one line per request (start time relative to
the first request, connection, method, path, Range, status, time to the response headers)
and a summary (requests in flight over time, requests per connection, new connections).

    tcpdump -i IFACE -l -nn -tt -A -s 512 'tcp port 9100' > wire.txt   # while the workload runs
    python3 bench/wan/wire.py wire.txt [--port 9100] [--limit 40]

Only the first packet of each request and of each response is needed (-s 512 keeps the
capture light). HTTP/1.1 without pipelining: on one connection, a response answers the
oldest request still waiting.
"""

import argparse
import re
from collections import defaultdict, deque

HEADER = re.compile(r"^(\d+\.\d+) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\]")
REQUEST = re.compile(r"(GET|PUT|POST|HEAD|DELETE) (/\S*) HTTP/1\.1")
RESPONSE = re.compile(r"HTTP/1\.1 (\d{3})")
RANGE = re.compile(r"[Rr]ange: bytes=(\d+)-(\d*)")
LENGTH = re.compile(r"[Cc]ontent-[Ll]ength: (\d+)")


def parse(path, port):
    packets = []
    current = None
    with open(path, errors="replace") as handle:
        for line in handle:
            match = HEADER.match(line)
            if match:
                if current:
                    packets.append(current)
                ts, _, sport, _, dport, flags = match.groups()
                current = {"t": float(ts), "sport": int(sport), "dport": int(dport), "flags": flags, "text": ""}
            elif current is not None:
                current["text"] += line
    if current:
        packets.append(current)

    requests = []
    waiting = defaultdict(deque)  # client port -> requests without a response yet
    syns = []
    for packet in packets:
        to_server = packet["dport"] == port
        client = packet["sport"] if to_server else packet["dport"]
        if to_server and packet["flags"] == "S":
            syns.append(packet["t"])
        text = packet["text"].replace("\n", " ")
        if to_server:
            match = REQUEST.search(text)
            if match:
                rng = RANGE.search(text)
                length = LENGTH.search(text)
                request = {
                    "t": packet["t"],
                    "conn": client,
                    "method": match.group(1),
                    "path": match.group(2)[:70],
                    "range": f"{rng.group(1)}-{rng.group(2)}" if rng else "",
                    "body": int(length.group(1)) if length else 0,
                    "status": None,
                    "answered": None,
                }
                requests.append(request)
                waiting[client].append(request)
        else:
            match = RESPONSE.search(text)
            if match and waiting[client]:
                request = waiting[client].popleft()
                request["status"] = match.group(1)
                request["answered"] = packet["t"]
    return requests, syns


def describe_range(text):
    if not text:
        return ""
    start, _, end = text.partition("-")
    if not end:
        return f"{start}-"
    size = int(end) - int(start) + 1
    return f"{int(start) / 1048576:.2f} MiB +{size / 1024:.0f} KiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("capture")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--limit", type=int, default=40, help="request lines to print (0: all)")
    args = parser.parse_args()
    requests, syns = parse(args.capture, args.port)
    if not requests:
        print("no requests found")
        return
    t0 = requests[0]["t"]
    shown = requests if args.limit == 0 else requests[: args.limit]
    print(f"{'start ms':>9} {'conn':>6} {'method':6} {'status':6} {'headers ms':>10}  path  range/body")
    for r in shown:
        latency = f"{(r['answered'] - r['t']) * 1000:.1f}" if r["answered"] else "-"
        extra = describe_range(r["range"]) or (f"body {r['body']} B" if r["body"] else "")
        print(f"{(r['t'] - t0) * 1000:9.1f} {r['conn']:>6} {r['method']:6} {r['status'] or '-':6} {latency:>10}  {r['path']}  {extra}")
    if len(requests) > len(shown):
        print(f"... {len(requests) - len(shown)} more")
    end = max((r["answered"] or r["t"]) for r in requests)
    by_method = defaultdict(int)
    for r in requests:
        by_method[r["method"]] += 1
    connections = len({r["conn"] for r in requests})
    latencies = sorted((r["answered"] - r["t"]) * 1000 for r in requests if r["answered"])
    median = latencies[len(latencies) // 2] if latencies else 0
    # Requests in flight, sampled every millisecond between the first request and the end.
    in_flight = []
    steps = int((end - t0) * 1000) + 1
    events = sorted([(r["t"], 1) for r in requests] + [(r["answered"], -1) for r in requests if r["answered"]])
    level, index = 0, 0
    for step in range(steps):
        now = t0 + step / 1000
        while index < len(events) and events[index][0] <= now:
            level += events[index][1]
            index += 1
        in_flight.append(level)
    mean_in_flight = sum(in_flight) / len(in_flight) if in_flight else 0
    print(
        f"\n{len(requests)} requests ({', '.join(f'{n} {m}' for m, n in sorted(by_method.items()))}) over "
        f"{(end - t0) * 1000:.0f} ms on {connections} connections ({len(syns)} opened during the capture); "
        f"median time to response headers {median:.1f} ms; requests in flight: mean {mean_in_flight:.1f}, "
        f"max {max(in_flight) if in_flight else 0}"
    )


if __name__ == "__main__":
    main()
