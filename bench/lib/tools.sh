# shellcheck shell=bash
# The tools: each mounts the bucket from the host side (s3vol and its modes, rclone, s3fs,
# mount-s3; raw mounts nothing), and is unmounted by PID.
# Sourced by bench/run, which sets REPO, WAN_DIR and the settings of its flags; defines
# functions and their state, runs nothing.

# ----------------------------------------------------------------------------------------
# Mounts: one fresh mount per measured case, its daemon started (and stopped) by PID

MNT=""
MOUNT_PID=""
MOUNT_SEQ=0

mount_tool() {
    local tool=$1
    MOUNT_SEQ=$((MOUNT_SEQ + 1))
    MNT="$WORK/mnt"
    local cache="$WORK/cache/$tool-$MOUNT_SEQ" log="$WORK/logs/$tool-$MOUNT_SEQ.log"
    # A remount case mounts twice on one cache directory, as a user does the next day (a
    # second-machine case twice on fresh ones, as two machines do).
    ((REMOUNT_RUN)) && cache="$WORK/cache/$tool-kept"
    mkdir -p "$MNT" "$cache" "$WORK/logs"
    case "$tool" in
        s3vol | s3vol-onclose | s3vol-before | s3vol-shared)
            # s3vol: the default, write-back (--upload-mode background); s3vol-onclose:
            # close() waits for the upload, as before issue 21; s3vol-before: the default
            # of another build ($S3VOL_BEFORE), for a before/after in one run;
            # s3vol-shared: the default with the shared cache tier on the near side.
            local extra=() bin=$S3VOL
            [[ "$tool" == s3vol-onclose ]] && extra=(--upload-mode on-close)
            [[ "$tool" == s3vol-shared ]] &&
                extra=(--shared-cache "s3://$TIER_BUCKET" --shared-cache-endpoint-url "$TIER_ENDPOINT")
            [[ "$tool" == s3vol-before ]] && bin=${S3VOL_BEFORE:?s3vol-before needs S3VOL_BEFORE=/path/to/an/earlier/s3vol}
            [[ "$ENDPOINT" == https:* ]] && extra+=(--ca-bundle "$TLS_DIR/ca.pem")
            AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY \
                "$bin" mount "s3://$BUCKET" "$MNT" --endpoint-url "$ENDPOINT" --force-path-style \
                --region us-east-1 --cache-dir "$cache" -f "${extra[@]}" >"$log" 2>&1 &
            ;;
        rclone-full | rclone)
            local extra=()
            [[ "$tool" == rclone-full ]] && extra=(--vfs-cache-mode full)
            [[ "$ENDPOINT" == https:* ]] && extra+=(--ca-cert "$TLS_DIR/ca.pem")
            # env -u AWS_CA_BUNDLE: rclone 1.60 refuses to start with a custom CA bundle on a
            # plain-http endpoint ("LoadCustomCABundleError"); the link is http anyway.
            env -u AWS_CA_BUNDLE RCLONE_CONFIG_WAN_TYPE=s3 RCLONE_CONFIG_WAN_PROVIDER=Other RCLONE_CONFIG_WAN_ENV_AUTH=false \
                RCLONE_CONFIG_WAN_ACCESS_KEY_ID=$ACCESS_KEY RCLONE_CONFIG_WAN_SECRET_ACCESS_KEY=$SECRET_KEY \
                RCLONE_CONFIG_WAN_ENDPOINT=$ENDPOINT RCLONE_CONFIG_WAN_REGION=us-east-1 \
                RCLONE_CONFIG_WAN_FORCE_PATH_STYLE=true \
                rclone mount "wan:$BUCKET" "$MNT" --cache-dir "$cache" "${extra[@]}" >"$log" 2>&1 &
            ;;
        s3fs)
            printf '%s:%s\n' "$ACCESS_KEY" "$SECRET_KEY" >"$WORK/s3fs.passwd"
            chmod 600 "$WORK/s3fs.passwd"
            local tls=""
            [[ "$ENDPOINT" == https:* ]] && tls=",no_check_certificate"
            s3fs "$BUCKET" "$MNT" -f -o "url=$ENDPOINT,use_path_request_style,endpoint=us-east-1,passwd_file=$WORK/s3fs.passwd$tls" \
                >"$log" 2>&1 &
            ;;
        mount-s3)
            # Its defaults (no local cache), with the flags that let it delete and
            # overwrite, which the write workloads need.
            local extra=()
            [[ "$ENDPOINT" == https:* ]] && extra=(--ca-bundle "$TLS_DIR/ca.pem")
            AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY \
                "$MOUNT_S3" "$BUCKET" "$MNT" --endpoint-url "$ENDPOINT" --force-path-style \
                --region us-east-1 --allow-delete --allow-overwrite --foreground "${extra[@]}" >"$log" 2>&1 &
            ;;
        *) die "unknown tool $tool" ;;
    esac
    MOUNT_PID=$!
    STARTED_PIDS+=("$MOUNT_PID")
    MOUNTS+=("$MNT")
    local i
    for i in $(seq 100); do
        mountpoint -q "$MNT" && return 0
        kill -0 "$MOUNT_PID" 2>/dev/null || { log "$tool did not mount: $(tail -3 "$log")"; return 1; }
        sleep 0.1
    done
    log "$tool did not mount in 10 s"
    return 1
}

unmount_tool() {
    local tool=$1
    if is_mounted "$MNT"; then
        if [[ "$tool" == s3vol* ]]; then
            # s3vol unmount uploads what is still dirty, then unmounts.
            timeout 120 "$S3VOL" unmount "$MNT" >/dev/null 2>&1 || fusermount3 -uz "$MNT" 2>/dev/null || true
        else
            unmount_fuse "$MNT" || true
        fi
    fi
    local i
    for i in $(seq 100); do
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$MOUNT_PID" 2>/dev/null; then
        log "$tool (pid $MOUNT_PID) did not exit after unmount: killed"
        kill -9 "$MOUNT_PID" 2>/dev/null || true
        is_mounted "$MNT" && fusermount3 -uz "$MNT" 2>/dev/null
    fi
    wait "$MOUNT_PID" 2>/dev/null || true
    forget_pid "$MOUNT_PID"
    MOUNTS=()
    rm -rf "$WORK/cache/$tool-$MOUNT_SEQ"
    ((REMOUNT_RUN)) || rm -rf "$WORK/cache/$tool-kept"
}

# s3vol's own request counters of the mount (s3vol status --json), or {} for the peers.
s3vol_counters() {
    local tool=$1
    if [[ "$tool" == s3vol* ]] && mountpoint -q "$MNT"; then
        "$S3VOL" status "$MNT" --json 2>/dev/null | jq -c '(if type == "array" then .[0] else . end) // {} |
            {requests, list_requests, head_requests} | with_entries(select(.value != null))' 2>/dev/null || echo '{}'
    else
        echo '{}'
    fi
}
