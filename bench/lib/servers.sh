# shellcheck shell=bash
# The S3 servers in the namespace (bench, s3s-fs), their request counts, and the fixtures:
# local trees made once, objects put once per server.
# Sourced by bench/run, which sets REPO, WAN_DIR and the settings of its flags; defines
# functions and their state, runs nothing.

BUCKET=bench
ACCESS_KEY=s3vol-demo
SECRET_KEY=s3vol-demo-secret

# ----------------------------------------------------------------------------------------
# Servers (inside the namespace)

SERVER=""        # the server under test
ENDPOINT=""
SERVER_PID=""
SERVER_LOG=""
# The test CA and the server certificate it signed (bench/run --tls; s3s-fs stays http).
TLS_DIR="$REPO/tests/it/tls"

start_server() {
    SERVER=$1
    SERVER_LOG="$WORK/server-$SERVER.log"
    start_tier
    case "$SERVER" in
        s3s-fs)
            local root="$WORK/s3s-fs-root"
            mkdir -p "$root/$BUCKET"
            ENDPOINT="http://$NS_IP:9000"
            # s3s logs each request's operation at debug level ("resolved route, op: ..."):
            # that is how requests are counted on this server.
            ip netns exec "$NS" env RUST_LOG=s3s::ops=debug NO_COLOR=1 \
                s3s-fs --host "$NS_IP" --port 9000 --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" \
                "$root" >"$SERVER_LOG" 2>&1 &
            ;;
        bench)
            local tls=()
            ENDPOINT="http://$NS_IP:9100"
            if ((TLS)); then
                tls=("$TLS_DIR/server.pem" "$TLS_DIR/server.key")
                ENDPOINT="https://$NS_IP:9100"
                export BENCH_CA_BUNDLE="$TLS_DIR/ca.pem"
            fi
            ip netns exec "$NS" "$BENCH_SERVER" "$NS_IP:9100" "$BUCKET" "$NS_IP:9101" "${tls[@]}" >"$SERVER_LOG" 2>&1 &
            ;;
        *) die "unknown server $SERVER (s3s-fs or bench)" ;;
    esac
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
    export BENCH_ENDPOINT=$ENDPOINT BENCH_BUCKET=$BUCKET
    local i
    for i in $(seq 50); do
        curl -s -o /dev/null ${BENCH_CA_BUNDLE:+--cacert "$BENCH_CA_BUNDLE"} "$ENDPOINT/" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || die "$SERVER exited: $(tail -5 "$SERVER_LOG")"
        sleep 0.2
    done
    die "$SERVER does not answer on $ENDPOINT"
}


# The shared cache tier of s3vol-shared: a second example server on the host side of the
# link, near the mounts, as a MinIO on the LAN is near the machines of a team.
TIER_ENDPOINT="http://127.0.0.1:9200"
TIER_BUCKET=tier
TIER_PID=""
start_tier() {
    [[ " $TOOLS " == *" s3vol-shared "* ]] || return 0
    "$BENCH_SERVER" 127.0.0.1:9200 "$TIER_BUCKET" 127.0.0.1:9201 >"$WORK/server-tier.log" 2>&1 &
    TIER_PID=$!
    STARTED_PIDS+=("$TIER_PID")
    local i
    for i in $(seq 50); do
        curl -s -o /dev/null "$TIER_ENDPOINT/" && return 0
        sleep 0.2
    done
    die "the tier server does not answer on $TIER_ENDPOINT: $(tail -3 "$WORK/server-tier.log")"
}

stop_server() {
    stop_pid "$SERVER_PID"
    [[ -n "$TIER_PID" ]] && stop_pid "$TIER_PID"
    TIER_PID=""
    [[ "$SERVER" == s3s-fs ]] && rm -rf "$WORK/s3s-fs-root"
    return 0
}

# Request counters of the server, as a JSON object {"GetObject": n, ...}.
SERVER_MARK=0
reset_request_counts() {
    case "$SERVER" in
        bench) curl -s "http://$NS_IP:9101/reset" >/dev/null ;;
        s3s-fs) SERVER_MARK=$(stat -c %s "$SERVER_LOG") ;;
    esac
}

read_request_counts() {
    case "$SERVER" in
        bench) curl -s "http://$NS_IP:9101/stats" || echo '{}' ;;
        s3s-fs)
            # `|| true`: no request at all is a count too (grep finds nothing).
            { tail -c +"$((SERVER_MARK + 1))" "$SERVER_LOG" | grep -o 'resolved route.*op: [A-Za-z0-9]*' || true; } |
                { grep -o '[A-Za-z0-9]*$' || true; } | jq -R . | jq -s 'group_by(.) | map({(.[0]): length}) | add // {}'
            ;;
    esac
}

# ----------------------------------------------------------------------------------------
# Fixtures: local trees made once, objects put once per server

prepare_local_fixtures() {
    log "fixtures: local trees and the source tarball"
    mkdir -p "$WORK/local"
    "$BENCH_CLIENT" make-files "$WORK/local" "$SMALL_FILES" 4 64 >/dev/null
    mkdir -p "$WORK/tree" "$WORK/many" "$WORK/ftree"
    "$BENCH_CLIENT" make-tree "$WORK/tree" "$TREE_DIRS" "$TREE_FILES" 1024 >/dev/null
    "$BENCH_CLIENT" make-files "$WORK/many" "$LS_FILES" 1 1 >/dev/null
    "$BENCH_CLIENT" make-find-tree "$WORK/ftree" "$FIND_TOP" "$FIND_SUB" "$FIND_FILES" >/dev/null
    make_tarball
    if [[ " $WORKLOADS " =~ \ (model-|dataload) ]]; then
        log "fixtures: a $MODEL_MIB MiB safetensors model, $DATA_FILES files of 100 KiB and $DATA_1M_FILES of 1,000 KiB in 100 directories"
        python3 "$ML" make-model "$WORK/model.safetensors" "$MODEL_MIB" 4 >/dev/null
        python3 "$ML" make-dataset "$WORK/dataset" "$DATA_FILES" 100 100 >/dev/null
        python3 "$ML" make-dataset "$WORK/dataset-1m" "$DATA_1M_FILES" 100 1000 >/dev/null
    fi
}

# A deterministic tarball of crate sources pinned by Cargo.lock: sorted names, fixed
# mtime and owner, regular files only (rclone mount has no symlinks).
make_tarball() {
    local registry crate version dirs=()
    registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)
    for crate in $TARBALL_CRATES; do
        version=$(awk -v name="$crate" '$1 == "name" && $3 == "\"" name "\"" {getline; gsub(/"/, "", $3); print $3; exit}' "$REPO/Cargo.lock")
        [[ -d "$registry/$crate-$version" ]] || die "$crate-$version is not in $registry (cargo fetch)"
        dirs+=("$crate-$version")
    done
    (cd "$registry" && find "${dirs[@]}" -type f -print0 | LC_ALL=C sort -z |
        tar --null --files-from=- --mtime=@1700000000 --owner=0 --group=0 --numeric-owner \
            --mode=u+rw,go+r --format=gnu -cf "$WORK/src.tar")
    mkdir -p "$WORK/untarred"
    tar -xf "$WORK/src.tar" -C "$WORK/untarred"
    TARBALL_FILES=$(find "$WORK/untarred" -type f | wc -l)
    TARBALL_MB=$(($(stat -c %s "$WORK/src.tar") / 1000000))
    TARBALL_NAMES="${dirs[*]}"
    log "fixtures: tarball of $TARBALL_NAMES: $TARBALL_MB MB, $TARBALL_FILES files"
}

populate_bucket() {
    log "fixtures: filling the bucket on $SERVER (big object, small object, ls and find trees)"
    "$BENCH_CLIENT" put-big big.bin "$BIG_MIB" 16 8 >/dev/null
    mkdir -p "$WORK/smallobj"
    head -c 4096 /dev/zero | tr '\0' x >"$WORK/smallobj/small.bin"
    "$BENCH_CLIENT" put-dir "$WORK/smallobj" fixtures 1 >/dev/null
    "$BENCH_CLIENT" put-dir "$WORK/many" many 32 >/dev/null
    "$BENCH_CLIENT" put-dir "$WORK/ftree" ftree 32 >/dev/null
    if [[ -f "$WORK/model.safetensors" ]]; then
        mkdir -p "$WORK/modelobj"
        ln -f "$WORK/model.safetensors" "$WORK/modelobj/model.safetensors"
        "$BENCH_CLIENT" put-dir "$WORK/modelobj" ml 1 >/dev/null
        "$BENCH_CLIENT" put-dir "$WORK/dataset" dataset 32 >/dev/null
        "$BENCH_CLIENT" put-dir "$WORK/dataset-1m" dataset-1m 32 >/dev/null
    fi
}
