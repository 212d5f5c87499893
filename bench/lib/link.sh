# shellcheck shell=bash
# The link between the host and the servers' namespace (veth + tc netem, TUN pair +
# userspace delay line, or a plain veth pair) and its measured RTT and rate.
# Sourced by bench/run, which sets REPO, WAN_DIR and the settings of its flags; defines
# functions and their state, runs nothing.

# Names of the link: a private /24 in 10.x, used nowhere on the host (checked).
NS="s3vwan$$"
VETH_HOST="s3vh$$"
VETH_NS="s3vn$$"
HOST_IP=10.213.77.1
NS_IP=10.213.77.2

# ----------------------------------------------------------------------------------------
# The link

# The link: a veth pair with netem where the kernel has it (CONFIG_NET_SCH_NETEM), else
# a userspace delay line (bench/wan/delayline.rs) between two TUN devices. Both give each
# direction the same one-way delay, a rate cap and a bounded queue.
LINK_KIND=""
DELAYLINE_PID=""

setup_link() {
    ip netns add "$NS"
    if [[ "$LINK" == none ]]; then
        setup_veth
        LINK_KIND="veth pair, no qdisc (no delay, no rate cap)"
    elif [[ "$LINK" != tun ]] && setup_veth_netem; then
        LINK_KIND="veth + tc netem (delay ${DELAY_MS}ms rate $RATE limit 1000000, each end)"
    else
        [[ "$LINK" == netem ]] && die "tc netem is not available in this kernel (CONFIG_NET_SCH_NETEM)"
        setup_tun_delayline
        LINK_KIND="TUN pair + userspace delay line bench/wan/delayline.rs (delay ${DELAY_MS}ms, rate ${RATE_MBIT} Mbit/s, queue ${QUEUE_MS} ms, each direction); this kernel has no sch_netem"
    fi
    ip netns exec "$NS" ip link set lo up
    log "link: $LINK_KIND"
}

# Without netem, the link is as fast as the kernel moves bytes between namespaces.
setup_veth() {
    ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
    ip link set "$VETH_NS" netns "$NS"
    address_link_ends
}

setup_veth_netem() {
    ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
    # netem on both ends: the delay applies once per direction (RTT = 2 x delay), and the
    # rate caps each direction. The default queue (1000 packets) is smaller than the
    # bandwidth-delay product at 1 Gbit/s x 40 ms, and would drop packets: a large limit
    # keeps the link lossless, as a provisioned WAN path is.
    if ! tc qdisc add dev "$VETH_HOST" root netem delay "${DELAY_MS}ms" rate "$RATE" limit 1000000 2>/dev/null; then
        log "link: tc netem is not available here; falling back to the userspace delay line"
        ip link del "$VETH_HOST"
        return 1
    fi
    ip link set "$VETH_NS" netns "$NS"
    ip netns exec "$NS" tc qdisc add dev "$VETH_NS" root netem delay "${DELAY_MS}ms" rate "$RATE" limit 1000000
    address_link_ends
}

setup_tun_delayline() {
    local binary="$REPO/target/bench-wan/delayline"
    if [[ ! -x "$binary" || "$WAN_DIR/delayline.rs" -nt "$binary" ]]; then
        mkdir -p "$(dirname "$binary")"
        rustc --edition 2024 -O -o "$binary" "$WAN_DIR/delayline.rs"
    fi
    # The delay line creates both TUN devices in the host namespace; one then moves into
    # the server's namespace (its file descriptor stays attached).
    "$binary" "$VETH_HOST" "$VETH_NS" "$DELAY_MS" "$RATE_MBIT" "$QUEUE_MS" >"$WORK/delayline.log" 2>&1 &
    DELAYLINE_PID=$!
    STARTED_PIDS+=("$DELAYLINE_PID")
    local i
    for i in $(seq 50); do
        grep -q ready "$WORK/delayline.log" 2>/dev/null && break
        kill -0 "$DELAYLINE_PID" 2>/dev/null || die "delay line: $(cat "$WORK/delayline.log")"
        sleep 0.1
    done
    ip link set "$VETH_NS" netns "$NS"
    address_link_ends
}

# Both ends of the link, the host's and the namespace's (already in it), addressed and up.
address_link_ends() {
    ip addr add "$HOST_IP/24" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    ip netns exec "$NS" ip addr add "$NS_IP/24" dev "$VETH_NS"
    ip netns exec "$NS" ip link set "$VETH_NS" up
}

# tc's rate syntax (1gbit, 500mbit, 100mbps...) in Mbit/s, for the delay line.
rate_in_mbit() {
    local rate=${1,,}
    case "$rate" in
        *gbit) echo "$(( ${rate%gbit} * 1000 ))" ;;
        *mbit) echo "${rate%mbit}" ;;
        *kbit) echo "$(( ${rate%kbit} / 1000 ))" ;;
        *gbps) echo "$(( ${rate%gbps} * 8000 ))" ;;
        *mbps) echo "$(( ${rate%mbps} * 8 ))" ;;
        *) die "rate $1: use NNgbit, NNmbit or NNmbps" ;;
    esac
}

# One iperf3 test of 5 s, in Mbit/s (null if it fails: iperf3 3.12 sometimes hangs at the
# end of a reverse test, hence the timeout).
iperf_mbit() {
    timeout 20 iperf3 -c "$NS_IP" -t 5 -J "$@" 2>/dev/null | jq '.end.sum_received.bits_per_second / 1e6' 2>/dev/null ||
        echo null
}

measure_link() {
    log "link: ping and iperf3"
    local rtt
    rtt=$(ping -c 5 -i 0.2 -q "$NS_IP" | awk -F/ '/^rtt/ {print $5}')
    ip netns exec "$NS" iperf3 -s -B "$NS_IP" >"$WORK/iperf3.log" 2>&1 &
    STARTED_PIDS+=($!)
    local iperf_pid=$!
    sleep 1
    local up down up4 down4
    up=$(iperf_mbit)
    down=$(iperf_mbit -R)
    up4=$(iperf_mbit -P 4)
    down4=$(iperf_mbit -P 4 -R)
    stop_pid "$iperf_pid"
    jq -n --argjson rtt "$rtt" --argjson up "$up" --argjson down "$down" \
        --argjson up4 "$up4" --argjson down4 "$down4" \
        '{rtt_ms: $rtt, upload_mbit: $up, download_mbit: $down, upload_4_streams_mbit: $up4, download_4_streams_mbit: $down4}' \
        >"$WORK/link.json"
    log "link: RTT ${rtt} ms, download $down Mbit/s (4 streams $down4), upload $up Mbit/s (4 streams $up4)"
}

# The latency of fdatasync(2) on the disk of the cache directories (under WORK), in ms:
# 100 appends of 100 bytes to one file, each made durable. With write-back, s3vol's close()
