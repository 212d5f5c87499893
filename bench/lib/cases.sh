# shellcheck shell=bash
# The matrix of measured cases: each on a fresh mount, after drop_caches, under a timeout,
# its results and failures into results.jsonl.
# Sourced by bench/run, which sets REPO, WAN_DIR and the settings of its flags; defines
# functions and their state, runs nothing.

# ----------------------------------------------------------------------------------------
# One measured case: fresh mount, dropped caches, the workload under a timeout, counters,
# unmount, and the bucket cleaned of what it wrote.

CASE_SEQ=0
run_case() {
    local workload=$1 tool=$2 run=$3
    CASE_SEQ=$((CASE_SEQ + 1))
    local name="w$CASE_SEQ" out="$WORK/case.out" err="$WORK/logs/case-$CASE_SEQ.err"
    local mnt="" status=ok rc=0 started elapsed base=$workload
    if [[ "$workload" == *-remount || "$workload" == *-second ]]; then
        # Remount: the workload once, untimed, on the same cache directory. Second machine:
        # once on another mount with a cache directory of its own (s3vol-shared fills its
        # tier there), then timed on a fresh one.
        base=$(base_workload "$workload")
        [[ "$workload" == *-remount ]] && REMOUNT_RUN=1
        if ! warm_up "$base" "$tool" "$name"; then
            REMOUNT_RUN=0
            record_failure "$workload" "$tool" "$run" failed "the untimed first pass (mount, workload, unmount) failed or took over $((TIMEOUT * 2 + 10)) s: $(tail -2 "$err" | tr '\n' ' ')"
            unmount_tool "$tool"
            return
        fi
    fi
    if [[ "$tool" != raw ]]; then
        if ! mount_tool "$tool"; then
            record_failure "$workload" "$tool" "$run" failed "mount failed: $(tail -2 "$WORK/logs/$tool-$MOUNT_SEQ.log" | tr '\n' ' ')"
            unmount_tool "$tool"
            return
        fi
        mnt=$MNT
        # Let the mount settle (first LIST, connections) before the clock: not part of any
        # workload. A daemon that cannot answer it in 20 s (s3fs on s3s-fs) is killed, which
        # fails the blocked listing, and the case is reported as failed.
        ls "$mnt" >/dev/null 2>&1 &
        local settle=$!
        for _ in $(seq 100); do kill -0 "$settle" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$settle" 2>/dev/null; then
            kill -9 "$MOUNT_PID" 2>/dev/null || true
            wait "$settle" 2>/dev/null || true
            record_failure "$workload" "$tool" "$run" failed "the mount did not answer a listing of its root in 20 s"
            unmount_tool "$tool"
            return
        fi
        wait "$settle" 2>/dev/null || true
    fi
    drop_caches
    reset_request_counts
    local counters_before
    counters_before=$(s3vol_counters "$tool")
    started=$(date +%s.%N)
    # A process blocked in a FUSE request cannot be killed until the daemon answers (s3fs
    # retries a 500 for minutes): past the timeout, the watchdog kills the daemon, which
    # fails the pending requests and lets `timeout` reap the case.
    local watchdog="" case_timeout
    # Each phase of a case (cp, then rm) has TIMEOUT of its own.
    case_timeout=$((TIMEOUT * $(produces "$workload" "$tool" | wc -w) + 10))
    if [[ "$tool" != raw ]]; then
        (for _ in $(seq $((case_timeout + 3))); do sleep 1; done; kill -9 "$MOUNT_PID" 2>/dev/null) &
        watchdog=$!
    fi
    run_case_function "$case_timeout" "$base" "$tool" "$mnt" "$name" >"$out" 2>"$err" || rc=$?
    [[ "$base" != "$workload" ]] && sed -i "s/^RESULT $base /RESULT $workload /" "$out"
    elapsed=$(since "$started")
    if [[ -n "$watchdog" ]]; then
        kill "$watchdog" 2>/dev/null || true
        wait "$watchdog" 2>/dev/null || true
    fi
    local requests counters_after
    counters_after=$(s3vol_counters "$tool")
    if ((rc == 124 || rc == 137)); then
        status=timeout
    elif ((rc != 0)); then
        status=failed
    fi
    # Requests are read after the unmount, which uploads what an asynchronous mode still
    # held: they are all the requests the workload cost.
    REMOUNT_RUN=0
    [[ "$tool" != raw ]] && unmount_tool "$tool"
    requests=$(read_request_counts) || requests="{}"
    [[ -n "$requests" ]] || requests='{}'
    [[ -n "$counters_before" ]] || counters_before='{}'
    [[ -n "$counters_after" ]] || counters_after='{}'
    # What the case wrote goes away, so every case starts from the same bucket.
    "$BENCH_CLIENT" delete-prefix "$name/" 32 >/dev/null 2>&1 || true
    [[ "$SERVER" == s3s-fs ]] && rm -rf "$WORK/s3s-fs-root/$BUCKET/$name"

    local produced line ended=0
    for produced in $(produces "$workload" "$tool"); do
        line=$(grep "^RESULT $produced " "$out" | head -1 | cut -d' ' -f3- || true)
        if ((ended)); then
            record_failure "$produced" "$tool" "$run" "not run" "the phase before it did not finish"
        elif [[ "$line" == TIMEOUT ]] || [[ -z "$line" && "$status" == timeout ]]; then
            record_failure "$produced" "$tool" "$run" timeout "over ${TIMEOUT} s (requests: $(jq -c . <<<"$requests"))"
            ended=1
        elif [[ -n "$line" ]]; then
            jq -c --arg server "$SERVER" --arg w "$produced" --arg tool "$tool" --argjson run "$run" \
                --argjson requests "$requests" --argjson before "$counters_before" \
                --argjson after "$counters_after" --argjson elapsed "$elapsed" \
                '(. | del(.requests)) + {server: $server, workload: $w, tool: $tool, run: $run, status: "ok",
                  elapsed_s: $elapsed, requests: $requests,
                  s3vol_counters: ($after | with_entries(.value -= ($before[.key] // 0)))}' <<<"$line" \
                >>"$RESULTS"
            log "  $SERVER $produced $tool run $run: $(jq -r '.value | . * 100 | round / 100' <<<"$line")"
        else
            record_failure "$produced" "$tool" "$run" failed "$(tail -3 "$err" | tr '\n' ' ') (requests: $(jq -c . <<<"$requests"))"
            ended=1
        fi
    done
}

# The workload a remount or second-machine case times: seq1 for seq1-remount.
base_workload() {
    local workload=${1%-remount}
    echo "${workload%-second}"
}

# The first mount of a remount case: the workload once, untimed, its figures dropped; the
# unmount keeps the cache directory for the timed mount that follows (a second-machine
# case's does not).
REMOUNT_RUN=0
export REMOUNT_RUN
warm_up() {
    local base=$1 tool=$2 name=$3 err="$WORK/logs/case-$CASE_SEQ.err"
    mount_tool "$tool" || return 1
    run_case_function $((TIMEOUT * 2 + 10)) "$base" "$tool" "$MNT" "$name" >/dev/null 2>"$err" ||
        { unmount_tool "$tool"; return 1; }
    unmount_tool "$tool"
}

# The case function of WORKLOAD (case_<workload>, dashes as underscores) with TOOL, MNT and
# NAME, in a child bash under a timeout of SECONDS (so a hung mount cannot hang the run).
run_case_function() {
    local seconds=$1 workload=$2
    shift 2
    timeout --kill-after=5 "$seconds" bash -c 'set -euo pipefail; "$@"' case "case_${workload//-/_}" "$@"
}

record_failure() {
    local workload=$1 tool=$2 run=$3 status=$4 note=$5
    log "  $SERVER $workload $tool run $run: $status ($note)"
    jq -nc --arg server "$SERVER" --arg w "$workload" --arg tool "$tool" --argjson run "$run" \
        --arg status "$status" --arg note "$note" --argjson timeout "$TIMEOUT" \
        '{server: $server, workload: $w, tool: $tool, run: $run, status: $status, note: $note, timeout_s: $timeout}' \
        >>"$RESULTS"
}

# Runs every workload on every tool, `runs` times, except that a slow or failed first run
# is not repeated.
run_matrix() {
    local runs=$1 workload tool run
    for workload in $WORKLOADS; do
        declare -F "case_$(tr - _ <<<"$(base_workload "$workload")")" >/dev/null || die "unknown workload $workload"
        for tool in $(tools_for "$workload"); do
            for run in $(seq "$runs"); do
                local case_started=$SECONDS
                run_case "$workload" "$tool" "$run"
                local last_status
                last_status=$(tail -1 "$RESULTS" | jq -r .status)
                if [[ "$last_status" != ok ]] || ((SECONDS - case_started > SLOW_SECONDS)); then
                    break
                fi
            done
        done
    done
}
