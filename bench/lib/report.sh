# shellcheck shell=bash
# For the report: the machine's disk figures, the versions and settings of the run
# (meta.json), and report.py's markdown and chart.
# Sourced by bench/run, which sets REPO, WAN_DIR and the settings of its flags; defines
# functions and their state, runs nothing.

# waits for one such flush (shared by the closes that come together), so a sequential
# writer pays it once per file; it depends on the disk and on what else writes to it.
measure_fdatasync() {
    python3 - "$WORK" <<'PY'
import json, os, statistics, sys, time
path = os.path.join(sys.argv[1], "fdatasync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
times = []
for _ in range(100):
    os.write(fd, b"x" * 100)
    started = time.perf_counter()
    os.fdatasync(fd)
    times.append((time.perf_counter() - started) * 1000)
    time.sleep(0.002)
os.close(fd)
os.remove(path)
times.sort()
print(json.dumps({"median_ms": round(statistics.median(times), 3), "p10_ms": round(times[9], 3),
                  "p90_ms": round(times[89], 3), "max_ms": round(times[-1], 3)}))
PY
}

# The local disk's cold sequential read in MiB/s: a file of the big file's size under WORK
# (the disk of the cache directories) read with dd bs=1M after dropping the page cache,
# what a warm read after a remount can at best reach.
measure_disk_read() {
    local file="$WORK/disk-read-probe"
    dd if=/dev/urandom of="$file" bs=1M count="$BIG_MIB" conv=fdatasync status=none
    drop_caches
    dd if="$file" of=/dev/null bs=1M 2>&1 | awk '/copied/ { printf "%.0f\n", $(NF-1) * ($NF == "GB/s" ? 1e9 : 1e6) / 1048576 }'
    rm -f "$file"
}

# ----------------------------------------------------------------------------------------
# Versions and settings, for the report

write_meta() {
    local s3vol_rev
    s3vol_rev=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n "$(cd "$REPO" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        s3vol_rev="$s3vol_rev+uncommitted changes"
    fi
    local workloads="$WORKLOADS"
    [[ "$WORKLOADS" == "$ALL_WORKLOADS" ]] && workloads=""
    jq -n \
        --arg date "$(date -u +%Y-%m-%dT%H:%MZ)" \
        --arg workloads "$workloads" --arg tools "$TOOLS" --arg check_workloads "$CHECK_WORKLOADS" \
        --arg quick "$QUICK" --arg runs "$RUNS" --arg check_runs "$CHECK_RUNS" --arg servers "$SERVERS" \
        --arg delay "$DELAY_MS" --arg rate "$RATE" \
        --arg qdisc "$LINK_KIND" \
        --arg s3vol "$("$S3VOL" --version 2>/dev/null | head -1) (git $s3vol_rev)" \
        --arg rclone "$(rclone version 2>/dev/null | head -1)" \
        --arg s3fs "$(s3fs --version 2>/dev/null | head -1)" \
        --arg mount_s3 "$("$MOUNT_S3" --version 2>/dev/null | head -1 || echo -)" \
        --arg s3s_fs "$(s3s-fs --version 2>/dev/null | head -1 || echo -)" \
        --arg fio "$(fio --version)" --arg iperf3 "$(iperf3 --version | head -1)" \
        --arg kernel "$(uname -r)" --arg cpus "$(nproc)" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --arg mem "$(free -g | awk '/^Mem/ {print $2}')" \
        --arg fuse "$(fusermount3 --version 2>&1 | head -1)" \
        --arg big_mib "$BIG_MIB" --arg rand_s "$RAND_SECONDS" --arg small_files "$SMALL_FILES" \
        --arg tree "$TREE_FILES files in $TREE_DIRS directories (1 KiB each)" \
        --arg ls_files "$LS_FILES" \
        --arg find "$((FIND_TOP + FIND_TOP * FIND_SUB + FIND_TOP * FIND_SUB * FIND_FILES)) entries ($FIND_TOP x $FIND_SUB directories of $FIND_FILES files)" \
        --arg tarball "$TARBALL_MB MB, $TARBALL_FILES files: $TARBALL_NAMES" \
        --arg model_mib "$MODEL_MIB" --arg data_files "$DATA_FILES" --arg data_1m_files "$DATA_1M_FILES" --arg ckpt_mib "$CKPT_MIB" \
        --arg close_files "$CLOSE_FILES" --arg timeout "$TIMEOUT" --arg slow "$SLOW_SECONDS" \
        --slurpfile link "$WORK/link.json" --arg tls "$TLS" \
        --argjson fdatasync_start "$FDATASYNC_START" --argjson disk_read "$DISK_READ" \
        '{date: $date, quick: ($quick == "1"), runs: $runs, check_runs: $check_runs, servers: $servers,
          workloads: $workloads, tools: $tools, check_workloads: $check_workloads,
          link: ({delay_ms_each_way: $delay, rate: $rate, qdisc: $qdisc, tls: ($tls == "1")} + $link[0]),
          versions: {s3vol: $s3vol, rclone: $rclone, s3fs: $s3fs, "mount-s3": $mount_s3, "s3s-fs": $s3s_fs, fio: $fio, iperf3: $iperf3,
                     kernel: $kernel, fuse: $fuse},
          machine: {cpus: $cpus, memory_gib: $mem, load_average_at_start: $load,
                    fdatasync_at_start: $fdatasync_start, disk_read_mib_s: $disk_read},
          sizes: {big_mib: $big_mib, random_seconds: $rand_s, small_files: $small_files, tree: $tree,
                  ls_files: $ls_files, find: $find, tarball: $tarball, close_files: $close_files,
                  model_mib: $model_mib, data_files: $data_files, data_1m_files: $data_1m_files, ckpt_mib: $ckpt_mib},
          timeout_s: $timeout, slow_s: $slow}' >"$WORK/meta.json"
}

# ----------------------------------------------------------------------------------------
# The report: report.py turns the results and meta.json into the markdown and the chart.
# $1 is the $SECONDS at which the run began, $2 the workloads asked for.

write_report() {
    local began=$1 all_workloads=$2
    # The repository's report (BENCHMARKS.md, bench/wan/chart.png, the raw results) only
    # changes when no other --output was asked for. A full run's results become
    # results-last.jsonl; a run of some workloads only keeps the other rows of that full
    # run in the report (marked) and its own results go to results-partial.jsonl.
    # A report elsewhere (another link, a quick look) stands alone: no rows or before/after
    # tables from the repository's runs, which were made on the default link.
    local chart="$WAN_DIR/chart.png" saved=last carry=() history=()
    if [[ "$OUTPUT" == "$REPO/BENCHMARKS.md" ]]; then
        # --modes-before: issue 21's before/after table, the write workloads of the last full
        # run made before write-back was the default.
        history=(--notes "$WAN_DIR/notes.md"
            --before "$WAN_DIR/results-before.jsonl" --previous "$WAN_DIR/results-previous.jsonl"
            --modes-before "$WAN_DIR/results-issue21-before.jsonl" --modes-before-meta "$WAN_DIR/meta-issue21-before.json")
        if [[ "$all_workloads" != "$ALL_WORKLOADS" ]] && [[ -f "$WAN_DIR/results-last.jsonl" ]]; then
            saved=partial
            carry=(--carry "$WAN_DIR/results-last.jsonl" --carry-meta "$WAN_DIR/meta-last.json")
        fi
    else
        chart="${OUTPUT%.md}.png"
    fi
    local fdatasync_end
    fdatasync_end=$(measure_fdatasync)
    log "disk: fdatasync $(jq -c . <<<"$fdatasync_end")"
    jq --arg f "bench/wan/results-$saved.jsonl" --argjson sync "$fdatasync_end" \
        '. + {results_file: $f} | .machine.fdatasync_at_end = $sync' "$WORK/meta.json" >"$WORK/meta.json.new"
    mv "$WORK/meta.json.new" "$WORK/meta.json"
    log "report: $OUTPUT and $chart"
    python3 "$WAN_DIR/report.py" --results "$RESULTS" --meta "$WORK/meta.json" --output "$OUTPUT" \
        --chart "$chart" --elapsed "$((SECONDS - began))" "${history[@]}" "${carry[@]}"
    if [[ "$OUTPUT" == "$REPO/BENCHMARKS.md" ]]; then
        cp "$RESULTS" "$WAN_DIR/results-$saved.jsonl"
        cp "$WORK/meta.json" "$WAN_DIR/meta-$saved.json"
    fi
}
