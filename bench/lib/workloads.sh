# shellcheck shell=bash
# The workloads: one case function each (case_<workload>), their helpers, and which tools
# run which workload.
# Sourced by bench/run, which sets REPO, WAN_DIR and the settings of its flags; defines
# functions and their state, runs nothing.

# ----------------------------------------------------------------------------------------
# Workloads. Each case function runs under `timeout` in a child bash (so a hung mount
# cannot hang the benchmark) and prints lines "RESULT <workload> <json with value>".
# $1 is the tool, $2 the mount point (empty for raw), $3 a per-case name to write under.

result() { printf 'RESULT %s %s\n' "$1" "$2"; }

# Seconds since a `date +%s.%N` time.
since() { echo "$(date +%s.%N) - $1" | bc; }

# A bench_client command's JSON with `value` set to one of its fields (the raw baselines).
client_value() {
    local field=$1
    shift
    "$BENCH_CLIENT" "$@" | jq -c "{value: .$field} + ."
}

# fio's aggregate read rate (MiB/s) of a job file's JSON output.
fio_read_mib() {
    jq -c '{value: (.jobs | map(.read.bw_bytes) | add / 1048576), iops: (.jobs | map(.read.iops) | add),
            runtime_s: (.jobs | map(.read.runtime) | max / 1000)}'
}

fio_seq_read() {
    local file=$1 jobs=$2
    fio --name=seq --filename="$file" --rw=read --bs=1M --size="${BIG_MIB}M" --numjobs="$jobs" \
        --ioengine=psync --invalidate=0 --readonly --group_reporting=0 --output-format=json | fio_read_mib
}

fio_rand_read() {
    local file=$1 jobs=$2
    # randrepeat=0: each job its own offsets (the same seed would make the 4 readers ask
    # for the same blocks in the same order, and measure a cache instead of the link).
    fio --name=rand --filename="$file" --rw=randread --bs=256k --size="${BIG_MIB}M" --numjobs="$jobs" \
        --ioengine=psync --invalidate=0 --readonly --randrepeat=0 --time_based --runtime="$RAND_SECONDS" \
        --output-format=json | fio_read_mib
}

case_seq1() {
    local tool=$1 mnt=$2
    if [[ "$tool" == raw ]]; then
        result seq1 "$(client_value mib_per_s get big.bin 8 8 1)"
        return
    fi
    phase_result seq1 "$(bounded bash -c 'fio_seq_read "$1" 1' _ "$mnt/big.bin")"
    # Warm: the same file again on the same mount, without dropping caches.
    phase_result seq1-warm "$(bounded bash -c 'fio_seq_read "$1" 1' _ "$mnt/big.bin")"
}

case_seq4() {
    local tool=$1 mnt=$2
    if [[ "$tool" == raw ]]; then
        # 4 readers without a shared cache move the object 4 times: 4 GETs of it at once.
        result seq4 "$(client_value mib_per_s get big.bin 8 8 4)"
        return
    fi
    result seq4 "$(fio_seq_read "$mnt/big.bin" 4)"
}

case_rand() {
    local workload=$1 jobs=$2 tool=$3 mnt=$4
    if [[ "$tool" == raw ]]; then
        result "$workload" "$(client_value mib_per_s get-random big.bin 256 "$jobs" "$RAND_SECONDS")"
        return
    fi
    result "$workload" "$(fio_rand_read "$mnt/big.bin" "$jobs")"
}
case_rand1() { case_rand rand1 1 "$@"; }
case_rand4() { case_rand rand4 4 "$@"; }

# Time to first byte: open + first read of 1 byte, on a fresh mount (so the name lookup
# is part of it, as for a program that opens a path). In milliseconds.
case_ttfb() {
    local workload=$1 key=$2 tool=$3 mnt=$4
    if [[ "$tool" == raw ]]; then
        result "$workload" "$("$BENCH_CLIENT" ttfb "$key" | jq -c '{value: (.seconds * 1000)} + .')"
        return
    fi
    result "$workload" "$("$BENCH_CLIENT" file-ttfb "$mnt/$key" | jq -c '{value: (.seconds * 1000)} + .')"
}
case_ttfb_big() { case_ttfb ttfb-big big.bin "$@"; }
case_ttfb_small() { case_ttfb ttfb-small fixtures/small.bin "$@"; }

# Sequential write of BIG_MIB, timed until the object is whole in the bucket (asynchronous
# uploaders return from close() earlier; that time is given as writer_s).
case_write() {
    local tool=$1 mnt=$2 name=$3
    if [[ "$tool" == raw ]]; then
        result write "$(client_value mib_per_s put-big "$name/big.bin" "$BIG_MIB" 16 8)"
        return
    fi
    mkdir "$mnt/$name"
    write_while_polling write "$name/big.bin" $((BIG_MIB * 1048576)) \
        "$BENCH_CLIENT" write-file "$mnt/$name/big.bin" "$BIG_MIB"
    result write "$(jq -nc --argjson t "$IN_BUCKET_S" --argjson w "$WRITER_S" --argjson mib "$BIG_MIB" \
        --argjson polled "$POLL_REQUESTS" '{value: ($mib / $t), seconds: $t, writer_s: $w, harness_requests: $polled}')"
}

# Runs a writer command under TIMEOUT with a poller of KEY (whole at SIZE bytes) started
# before it: the poller runs from before the first byte, so the moment the object is in the
# bucket is known within one poll (20 ms) and a round trip, for every tool alike (a poller
# started after the writer returned added its own start-up, ~0.4 s). Sets WRITER_S (the
# writer's `seconds`), IN_BUCKET_S (from before the writer until the object was whole) and
# POLL_REQUESTS (the poller's); a timeout of either ends the case as WORKLOAD TIMEOUT.
write_while_polling() {
    local workload=$1 key=$2 size=$3 started poller writer found
    shift 3
    started=$(date +%s.%N)
    "$BENCH_CLIENT" wait-object "$key" "$size" "$TIMEOUT" 20 >"$WORK/poll.json" &
    poller=$!
    writer=$(bounded "$@")
    if [[ "$writer" == TIMEOUT ]]; then
        kill "$poller" 2>/dev/null || true
        phase_result "$workload" TIMEOUT
    fi
    WRITER_S=$(jq .seconds <<<"$writer")
    wait "$poller" || phase_result "$workload" TIMEOUT
    found=$(jq .found_unix "$WORK/poll.json")
    POLL_REQUESTS=$(jq -c .requests "$WORK/poll.json")
    IN_BUCKET_S=$(echo "$found - $started" | bc)
}

# close() of a new 1-byte file: median of CLOSE_FILES files, milliseconds.
case_close() {
    local tool=$1 mnt=$2 name=$3
    if [[ "$tool" == raw ]]; then
        result close "$("$BENCH_CLIENT" put-latency "$name" "$CLOSE_FILES" | jq -c '{value: (.seconds * 1000), seconds}')"
        return
    fi
    mkdir "$mnt/$name"
    result close "$("$BENCH_CLIENT" close-latency "$mnt/$name" "$CLOSE_FILES" |
        jq -c '{value: (.seconds * 1000), create_write_close_ms: (.create_write_close_seconds * 1000)}')"
}

# Times a command that writes files into the mount, until the bucket holds `count` files
# under `prefix`; prints {value: seconds, writer_s}, or TIMEOUT when the phase (command and
# wait together) takes longer than TIMEOUT.
time_until_count() {
    local prefix=$1 count=$2
    shift 2
    local started writer total polled remaining
    started=$(date +%s.%N)
    [[ "$(bounded "$@")" == TIMEOUT ]] && { echo TIMEOUT; return 0; }
    writer=$(since "$started")
    remaining=$(echo "$TIMEOUT - $writer + 1" | bc | cut -d. -f1)
    polled=$("$BENCH_CLIENT" wait-count "$prefix" "$count" "${remaining:-1}" | jq -c .requests) || { echo TIMEOUT; return 0; }
    total=$(since "$started")
    jq -nc --argjson t "$total" --argjson w "$writer" --argjson polled "$polled" \
        '{value: $t, writer_s: $w, harness_requests: $polled}'
}

# Runs a command with TIMEOUT; prints TIMEOUT instead of its output if it ran out of time
# (other failures fail).
bounded() {
    local rc=0
    timeout --kill-after=5 "$TIMEOUT" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        echo TIMEOUT
        return 0
    fi
    return "$rc"
}

# Prints the RESULT line of a phase; a phase that timed out ends the case (the next
# phases are reported as not run).
phase_result() {
    local workload=$1 json=$2
    result "$workload" "$json"
    [[ "$json" == TIMEOUT ]] && exit 124
    return 0
}

case_create() {
    local tool=$1 mnt=$2 name=$3
    if [[ "$tool" == raw ]]; then
        result create "$(client_value seconds put-dir "$WORK/local" "$name" 32)"
        return
    fi
    mkdir "$mnt/$name"
    phase_result create "$(time_until_count "$name/" "$SMALL_FILES" \
        "$BENCH_CLIENT" make-files "$mnt/$name" "$SMALL_FILES" 4 64)"
}

# cp -r of the geesefs tree into the mount, then rm -r of it; rm is timed until the
# bucket has none of its files left.
case_cp() {
    local tool=$1 mnt=$2 name=$3
    if [[ "$tool" == raw ]]; then
        result cp "$(client_value seconds put-dir "$WORK/tree" "$name" 32)"
        result rm "$(client_value seconds delete-prefix "$name/" 32)"
        return
    fi
    phase_result cp "$(time_until_count "$name/" "$TREE_FILES" cp -r "$WORK/tree" "$mnt/$name")"
    phase_result rm "$(time_until_count "$name/" 0 rm -r "$mnt/$name")"
}

case_untar() {
    local tool=$1 mnt=$2 name=$3
    if [[ "$tool" == raw ]]; then
        result untar "$(client_value seconds put-dir "$WORK/untarred" "$name" 32)"
        return
    fi
    mkdir "$mnt/$name"
    phase_result untar "$(time_until_count "$name/" "$TARBALL_FILES" tar -xf "$WORK/src.tar" -C "$mnt/$name")"
}

case_ls() {
    local tool=$1 mnt=$2
    if [[ "$tool" == raw ]]; then
        result ls "$(client_value seconds list many/ 1)"
        return
    fi
    result ls "$(time_listing lines ls -l "$mnt/many")"
}

case_find() {
    local tool=$1 mnt=$2
    if [[ "$tool" == raw ]]; then
        result find "$(client_value seconds list ftree/ 0)"
        return
    fi
    result find "$(time_listing entries find "$mnt/ftree")"
}

# Times a listing through the mount; prints {value: seconds, FIELD: the lines it printed}.
time_listing() {
    local field=$1 started entries
    shift
    started=$(date +%s.%N)
    entries=$("$@" | wc -l)
    jq -nc --argjson t "$(since "$started")" --argjson n "$entries" "{value: \$t, $field: \$n}"
}

# Which tools run which workload: s3vol's upload mode only changes writes.
tools_for() {
    local workload=$1 tool out=()
    for tool in $TOOLS; do
        # Nothing of the raw client survives a remount: it has no warm figure (and no
        # second machine gains from a first).
        [[ ("$workload" == *-remount || "$workload" == *-second) && "$tool" == raw ]] && continue
        # The shared tier only matters to a second machine.
        [[ "$tool" == s3vol-shared && "$workload" != *-second ]] && continue
        if [[ "$tool" == s3vol-onclose ]]; then
            case "$workload" in write | close | create | cp | untar | ckpt) ;; *) continue ;; esac
        fi
        out+=("$tool")
    done
    echo "${out[@]}"
}

# The results a case function produces (cp also measures rm, seq1 the warm re-read).
produces() {
    case "$1" in
        seq1) [[ "$2" == raw ]] && echo seq1 || echo seq1 seq1-warm ;;
        cp) echo cp rm ;;
        dataload8 | dataload32 | dataload8-1m | dataload32-1m) [[ "$2" == raw ]] && echo "$1" || echo "$1" "$1-epoch2" ;;
        *-remount | *-second) echo "$1" ;;
        *) echo "$1" ;;
    esac
}

# Model loading: safetensors' safe_open (mmap), every tensor read, on a cold mount. The raw
# client downloads the file as a tuned downloader does (8 MiB ranges, 8 in flight), the
# same whatever order the program wants; 4 processes without a shared cache move it 4 times.
# A workload's JSON with `value` set to one of its fields, or TIMEOUT.
ml_value() {
    local field=$1 out
    shift
    out=$(bounded "$@")
    if [[ "$out" == TIMEOUT ]]; then echo TIMEOUT; else jq -c "{value: .$field} + ." <<<"$out"; fi
}
ml_raw_get() { client_value mib_per_s get ml/model.safetensors 8 8 "$1"; }
case_model_file() {
    [[ "$1" == raw ]] && { result model-file "$(ml_raw_get 1)"; return; }
    phase_result model-file "$(ml_value mib_per_s python3 "$ML" load-model "$2/ml/model.safetensors" file 1)"
}
case_model_shuffled() {
    [[ "$1" == raw ]] && { result model-shuffled "$(ml_raw_get 1)"; return; }
    phase_result model-shuffled "$(ml_value mib_per_s python3 "$ML" load-model "$2/ml/model.safetensors" shuffled 1)"
}
case_model_4proc() {
    [[ "$1" == raw ]] && { result model-4proc "$(ml_raw_get 4)"; return; }
    phase_result model-4proc "$(ml_value mib_per_s python3 "$ML" load-model "$2/ml/model.safetensors" file 4)"
}
# A plain sequential read of the whole file, as torch.load does.
case_model_read() {
    [[ "$1" == raw ]] && { result model-read "$(ml_raw_get 1)"; return; }
    phase_result model-read "$(ml_value mib_per_s python3 "$ML" read-whole "$2/ml/model.safetensors")"
}

# Data loading: WORKERS processes read every file of a dataset whole, in a random order;
# the second epoch on the same mount (the caches). The raw client GETs every object with
# as many requests in flight as there are workers. `dataset` holds files of 100 KiB,
# `dataset-1m` files of 1,000 KiB (ten to a directory, so their listings HEAD them).
case_dataload() {
    local name=$1 dataset=$2 workers=$3 tool=$4 mnt=$5
    if [[ "$tool" == raw ]]; then
        result "$name" "$(client_value seconds get-prefix "$dataset/" "$workers" 1)"
        return
    fi
    phase_result "$name" "$(ml_value seconds python3 "$ML" epoch "$mnt/$dataset" "$workers" 1)"
    ((REMOUNT_RUN)) && return
    phase_result "$name-epoch2" "$(ml_value seconds python3 "$ML" epoch "$mnt/$dataset" "$workers" 2)"
}
case_dataload8() { case_dataload dataload8 dataset 8 "$@"; }
case_dataload32() { case_dataload dataload32 dataset 32 "$@"; }
case_dataload8_1m() { case_dataload dataload8-1m dataset-1m 8 "$@"; }
case_dataload32_1m() { case_dataload dataload32-1m dataset-1m 32 "$@"; }

# Checkpoint save: CKPT_MIB written to ckpt.tmp, fsync, renamed to ckpt, timed until ckpt
# is whole in the bucket. The raw client: one multipart upload (16 MiB parts, 8 in flight).
case_ckpt() {
    local tool=$1 mnt=$2 name=$3
    if [[ "$tool" == raw ]]; then
        result ckpt "$(client_value seconds put-big "$name/ckpt" "$CKPT_MIB" 16 8)"
        return
    fi
    mkdir "$mnt/$name"
    write_while_polling ckpt "$name/ckpt" $((CKPT_MIB * 1048576)) python3 "$ML" checkpoint "$mnt/$name" "$CKPT_MIB"
    result ckpt "$(jq -nc --argjson t "$IN_BUCKET_S" --argjson w "$WRITER_S" '{value: $t, writer_s: $w}')"
}

# What a case runs, exported to the child bash of each case: the helpers above and every
# case function.
CASE_FUNCTIONS=(result since client_value bounded phase_result fio_read_mib fio_seq_read fio_rand_read
    time_until_count write_while_polling time_listing ml_value ml_raw_get)
mapfile -t -O "${#CASE_FUNCTIONS[@]}" CASE_FUNCTIONS < <(compgen -A function case_)
