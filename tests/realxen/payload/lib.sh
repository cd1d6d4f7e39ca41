# shellcheck shell=bash disable=SC2034
# Scenario framework, sourced by dom0-run and by every scenario (bash).
#
# A scenario runs in dom0 with RX_SCENARIO set to its name; everything it
# keeps goes to $R (/results/<name>/): its checks (`checks`, one
# "PASS|FAIL<TAB>name<TAB>detail" line each, judged on the build machine),
# xendisk's output, xenstore trees, xl block-list. Guests are shared by
# all scenarios: a scenario leaves them running, and dom0-run tears down
# what it attached between scenarios.

export PATH=/run/payload:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
P=/run/payload
R=/results/${RX_SCENARIO:-runner}
W=/tmp/rx                       # backing files of pool devices (tmpfs)
export XENDISK_STATE=/var/lib/xendisk/state.sqlite
mkdir -p "$R" "$W"

# (on stderr: functions that print a result on stdout log too)
log() { echo "[$(date +%T.%3N)] $*" >&2; }
# progress line on the serial console, which the build machine shows
console() { echo "RX: $*" > /dev/console; }

# --- checks ------------------------------------------------------------------
record() { # record PASS|FAIL NAME DETAIL
    local detail=${3//$'\n'/ | }
    printf '%s\t%s\t%s\n' "$1" "$2" "${detail:0:400}" >> "$R/checks"
    log "CHECK $1 $2${3:+: ${detail:0:400}}"
}
# check NAME COMMAND...: passes when COMMAND succeeds
check() {
    local name=$1; shift
    if "$@"; then record PASS "$name" ""; else record FAIL "$name" "failed: $*"; fi
}
# check_eq NAME EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then record PASS "$1" "$3"; else record FAIL "$1" "expected [$2], got [$3]"; fi
}
# check_match NAME GLOB ACTUAL
check_match() {
    # shellcheck disable=SC2053
    if [[ $3 == $2 ]]; then record PASS "$1" "$3"; else record FAIL "$1" "expected $2, got [$3]"; fi
}
# fatal MESSAGE: the scenario cannot go on
fatal() { record FAIL "fatal" "$*"; exit 1; }

# --- xendisk -----------------------------------------------------------------
XD_N=0
# xd LABEL ARGS...: run xendisk ARGS, keep stdout, stderr and the exit code
# as $R/xd-NN-LABEL.{out,err}; sets XD_RC, XD_OUT and XD_ERR, returns XD_RC
xd() {
    local label=$1; shift
    XD_N=$((XD_N + 1))
    local f
    f=$(printf '%s/xd-%02d-%s' "$R" "$XD_N" "$label")
    log "+ xendisk $*"
    local t0=$EPOCHREALTIME
    xendisk "$@" > "$f.out" 2> "$f.err" < /dev/null
    XD_RC=$?
    echo "$XD_RC" > "$f.rc"
    XD_OUT=$(cat "$f.out"); XD_ERR=$(cat "$f.err")
    log "  exit $XD_RC after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')s"
    sed 's/^/  | /' "$f.out" "$f.err" | tail -n 40 >&2
    return "$XD_RC"
}

# --- xenstore ----------------------------------------------------------------
# xs_wait PATH GLOB SECONDS [COMMAND...]: start watching PATH, run COMMAND,
# then wait (no polling: xenstore-watch blocks) until PATH's value matches
# GLOB (@children: until the directory PATH has a child). Sets XS_VALUE. The watch fires once when it is set, so a value
# written before the watch started is seen too.
xs_wait() {
    local path=$1 pat=$2 secs=$3 ev list=
    shift 3
    # @children: a directory with something in it
    [ "$pat" = @children ] && list=1 pat='?*'
    coproc XSW { exec timeout "$secs" xenstore-watch "$path" 2> /dev/null; }
    local fd=${XSW[0]} pid=$XSW_PID
    (($#)) && "$@"
    while read -r -u "$fd" ev; do
        if [ "$list" ]; then
            XS_VALUE=$(xenstore-list "$path" 2> /dev/null | head -n1)
        else
            XS_VALUE=$(xenstore-read "$path" 2> /dev/null) || XS_VALUE=
        fi
        # shellcheck disable=SC2053
        if [[ $XS_VALUE == $pat ]]; then
            kill "$pid" 2> /dev/null; wait "$pid" 2> /dev/null
            return 0
        fi
    done
    wait "$pid" 2> /dev/null
    return 1
}
# domid NAME: the guest's domid (remembered: `xl domid` costs ~1 s under TCG)
domid() {
    local f=/run/rx-domid-$1 id
    if [ -r "$f" ] && read -r id < "$f" &&
        [ "$(xenstore-read "/local/domain/$id/name" 2> /dev/null)" = "$1" ]; then
        echo "$id"
        return 0
    fi
    id=$(xl domid "$1" 2> /dev/null) || return 1
    echo "$id" > "$f"
    echo "$id"
}

# --- guests ------------------------------------------------------------------
GUEST_MEM=96
guest_create() { # guest_create NAME: starts it, does not wait
    cat > "/tmp/$1.cfg" << EOF
name = "$1"
type = "pv"
kernel = "/opt/xendisk-realxen/guest/vmlinuz"
ramdisk = "/opt/xendisk-realxen/guest/initrd.gz"
extra = "console=hvc0 quiet"
memory = $GUEST_MEM
vcpus = 1
disk = [ ]
vif = [ ]
on_crash = "preserve"
EOF
    log "+ xl create $1"
    xl create -q "/tmp/$1.cfg"
}
# need_guest NAME: the guest runs and its agent listens (boots it if need be)
need_guest() {
    local id
    id=$(domid "$1") || { guest_create "$1" || fatal "xl create $1 failed"; id=$(domid "$1"); }
    xs_wait "/local/domain/$id/data/agent" ready 120 || fatal "guest $1 (domid $id) never became ready"
}
GSEQ=0
# gcmd GUEST VERB ARGS...: ask the guest's agent; sets G_STATUS and G_OUT,
# returns G_STATUS (99 when it did not answer within 30 s)
gcmd() {
    local guest=$1; shift
    local id base
    id=$(domid "$guest") || { G_STATUS=99; G_OUT="no domain $guest"; return 99; }
    base=/local/domain/$id/data
    GSEQ=$((GSEQ + 1))
    # unique even from subshells, whose GSEQ increments are lost
    local tag="$BASHPID.$GSEQ.$RANDOM"
    if xs_wait "$base/reply" "$tag *" 30 xenstore-write "$base/cmd" "$tag $*"; then
        local rest=${XS_VALUE#"$tag "}
        G_STATUS=${rest%% *}
        G_OUT=${rest#"$G_STATUS"}; G_OUT=${G_OUT# }
    else
        G_STATUS=99; G_OUT="no answer"
    fi
    log "guest $guest: $* -> $G_STATUS $G_OUT"
    return "$G_STATUS"
}
# guest_disk GUEST DISK: "SECTORS:RO" of DISK as the guest lists it, or ""
guest_disk() {
    gcmd "$1" list || return 1
    local d
    for d in $G_OUT; do
        [ "${d%%:*}" = "$2" ] && { echo "${d#*:}"; return 0; }
    done
    echo ""
}
# guest_wait_disk GUEST DISK present|absent [SECONDS]: waits (1 s steps)
# until the guest lists DISK, or no longer does; prints its SECTORS:RO
guest_wait_disk() {
    local n=${4:-20} v
    while :; do
        v=$(guest_disk "$1" "$2")
        case $3 in
        present) [ -n "$v" ] && { echo "$v"; return 0; } ;;
        absent) [ -z "$v" ] && return 0 ;;
        esac
        n=$((n - 1)); ((n > 0)) || { echo "$v"; return 1; }
        sleep 1
    done
}

# --- disks ------------------------------------------------------------------------
# pool_loop NAME MiB: a loop device over a new sparse file; prints /dev/loopN
pool_loop() {
    truncate -s "${2}M" "$W/$1.img"
    losetup --find --show "$W/$1.img"
}
# dom0_write DEVICE BYTE-OFFSET TEXT: TEXT at the start of that sector (the
# rest zeroed), bypassing dom0's page cache
dom0_write() {
    printf '%s' "$3" | dd of="$1" bs=512 seek=$(($2 / 512)) count=1 conv=sync,notrunc oflag=direct status=none
}
# dom0_read DEVICE BYTE-OFFSET LEN: as the guest's read shows it
dom0_read() {
    dd if="$1" bs=512 skip=$(($2 / 512)) count=1 iflag=direct status=none | head -c "$3" | tr -c 'A-Za-z0-9._:-' '.'
}
# vdisk_runs NAME: one line per run of contiguous extents of vdisk NAME, from
# `xendisk state --json`: VDISK-BYTE-OFFSET DEVICE-PATH DEVICE-BYTE-OFFSET BYTES
vdisk_runs() {
    xendisk state --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
paths = {d["device"]: d["path"] for p in s["pools"] for d in p["devices"]}
v = next(v for v in s["vdisks"] if v["name"] == sys.argv[1])
runs = []
for e in v["extents"]:
    if runs and runs[-1][0] == e["device"] and runs[-1][1] + runs[-1][2] == e["start"]:
        runs[-1][2] += e["sectors"]
    else:
        runs.append([e["device"], e["start"], e["sectors"]])
at = 0
for dev, start, n in runs:
    print(at * 512, paths.get(dev, dev), start * 512, n * 512)
    at += n
' "$1"
}

# --- evidence -----------------------------------------------------------------
# evidence LABEL: the xenstore tree, xl's view of every guest's disks, the
# state DB, dom0's block devices; into $R/LABEL.*
evidence() {
    local f=$R/$1 d
    xenstore-ls -f -p > "$f.xenstore" 2>&1
    # the guests from xenstore: `xl list` would cost another second or two
    for d in $(xenstore-list /local/domain); do
        [ "$d" = 0 ] && continue
        echo "== $d $(xenstore-read "/local/domain/$d/name" 2> /dev/null)"; xl block-list "$d" 2>&1
    done > "$f.block-list"
    [ -e "$XENDISK_STATE" ] && xendisk state --json > "$f.state.json" 2>&1
    { dmsetup table 2>&1; echo; losetup --list 2>&1; } > "$f.devices"
}

# xs_vbd DOMID DEVID FILE: the three xenstore subtrees of one vbd (backend,
# frontend, libxl's record), with permissions
xs_vbd() {
    local p
    for p in "/local/domain/0/backend/vbd/$1/$2" "/local/domain/$1/device/vbd/$2" "/libxl/$1/device/vbd/$2"; do
        xenstore-ls -f -p "$p" 2>&1 || echo "$p: absent"
    done > "$3"
}
# vbd_count DOMID: how many vbd backends dom0 serves to DOMID
vbd_count() { xenstore-list "/local/domain/0/backend/vbd/$1" 2> /dev/null | wc -l; }
# connected DOMID: every vbd backend of DOMID has hotplug-status "connected"
# and state 4; prints the first that has not
connected() {
    local be=/local/domain/0/backend/vbd/$1 dev st hs
    for dev in $(xenstore-list "$be" 2> /dev/null); do
        st=$(xenstore-read "$be/$dev/state" 2> /dev/null)
        hs=$(xenstore-read "$be/$dev/hotplug-status" 2> /dev/null)
        if [ "$st" != 4 ] || [ "$hs" != connected ]; then
            echo "$dev: state $st, hotplug-status $hs, $(xenstore-read "$be/$dev/hotplug-error" 2> /dev/null)"
            return 1
        fi
    done
}
