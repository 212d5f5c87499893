# shellcheck shell=bash
# bench/run's common ground: logging, the processes and mounts it started and their
# cleanup (by PID), prerequisites, builds, drop_caches.
# Sourced by bench/run, which sets REPO, WAN_DIR and the settings of its flags; defines
# functions and their state, runs nothing.

WORK=""
# PIDs this script started and must stop, and the mounts it made.
declare -a STARTED_PIDS=()
declare -a MOUNTS=()

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "bench/run: $*"; exit 1; }

# ----------------------------------------------------------------------------------------
# Cleanup: every mount, every process we started (by PID), the namespace and the veth.

# Whether PATH is a mount point, also when its FUSE daemon died (`mountpoint` cannot stat
# such a mount: "Transport endpoint is not connected").
is_mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; }

# Unmounts a FUSE mount, lazily if it is busy.
unmount_fuse() { fusermount3 -u "$1" 2>/dev/null || fusermount3 -uz "$1" 2>/dev/null; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    local mnt pid
    for mnt in "${MOUNTS[@]}"; do
        is_mounted "$mnt" && unmount_fuse "$mnt"
    done
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    sleep 0.5
    for pid in "${STARTED_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    done
    ip link del "$VETH_HOST" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    # The delay line's TUN devices vanish with it (killed above) and with the namespace.
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if ((KEEP)) || ((status != 0)); then
            log "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}

forget_pid() {
    local gone=$1 i
    for i in "${!STARTED_PIDS[@]}"; do
        [[ "${STARTED_PIDS[$i]}" == "$gone" ]] && unset 'STARTED_PIDS[i]'
    done
    return 0
}

# Stops a process this script started (by its PID), waits for it and forgets it.
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# ----------------------------------------------------------------------------------------
# Preconditions and builds

check_prerequisites() {
    ((EUID == 0)) || die "needs root (network namespace, tc, mounts, drop_caches)"
    [[ -c /dev/fuse ]] || die "no /dev/fuse"
    local tool
    for tool in ip tc fio rclone s3fs iperf3 gnuplot jq curl fusermount3 python3 tar ping bc; do
        command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y rclone s3fs fio gnuplot-nox iperf3 jq curl fuse3 iputils-ping bc"
    done
    if [[ " $WORKLOADS " =~ \ (model-|dataload|ckpt) ]]; then
        python3 -c "import numpy, safetensors" 2>/dev/null ||
            die "the ML workloads need numpy and safetensors: pip install numpy safetensors"
    fi
    if [[ " $TOOLS " == *" mount-s3 "* && ! -x "$MOUNT_S3" ]]; then
        die "mount-s3 is missing at $MOUNT_S3: build it once with ../shared/peers/build-mountpoint-s3 (about 20 minutes), set MOUNT_S3, or leave it out of --tools"
    fi
    if [[ " $SERVERS " == *" s3s-fs "* ]]; then
        command -v s3s-fs >/dev/null ||
            die "s3s-fs is missing: cargo install --locked s3s-fs --version 0.14.1 --features binary"
    fi
    ip -4 addr | grep -q "${HOST_IP%.*}\." && die "${HOST_IP%.*}.0/24 is already used on this host"
    return 0
}

build_binaries() {
    # Build only what is missing: other work may be compiling on this machine.
    if [[ ! -x "$S3VOL" || ! -x "$BENCH_SERVER" || ! -x "$BENCH_CLIENT" ]]; then
        log "building s3vol and the benchmark examples (release)"
        (cd "$REPO" && cargo build --release --bin s3vol --example bench_server --example bench_client)
    fi
}

# Copies of the binaries, so a rebuild in the work tree during the run cannot change what
# is measured halfway.
snapshot_binaries() {
    mkdir -p "$WORK/bin"
    cp "$S3VOL" "$BENCH_SERVER" "$BENCH_CLIENT" "$WORK/bin/"
    S3VOL="$WORK/bin/s3vol"
    BENCH_SERVER="$WORK/bin/bench_server"
    BENCH_CLIENT="$WORK/bin/bench_client"
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

