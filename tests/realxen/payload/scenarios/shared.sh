# shared TOOLSTACK: one vdisk for both guests.
#  - w! on both: with toolstack xenstore each guest sees the other's writes;
#    with toolstack xl it is refused before anything changes (xl has no w!
#    access, and Debian's block script refuses a second writer).
#  - r on both: both see it read-only, with the data.
. /run/payload/lib.sh
toolstack=$1
need_guest guest1
need_guest guest2
dev=$(pool_loop pool0 16) || fatal "losetup failed"
xd init init || fatal "init failed"
desired() { # desired MODE
    cat > "$R/desired.toml" << EOF
[settings]
toolstack = "$toolstack"

[pools.p]
extent_size = "1MiB"
devices = ["$dev"]

[vdisks.sh]
pool = "p"
size = "2MiB"

[domains.guest1.disks]
xvdb = { source = "vdisk:sh", mode = "$1" }
[domains.guest2.disks]
xvdb = { source = "vdisk:sh", mode = "$1" }
EOF
}
mark="rx-shared-$RANDOM"
desired 'w!'
if [ "$toolstack" = xl ]; then
    xs_before=$(xenstore-ls -f /local/domain/0/backend 2>&1)
    xd plan-w plan "$R/desired.toml"
    check_eq "plan of w! for two guests exits 1 (xl cannot)" 1 "$XD_RC"
    xd apply-w apply "$R/desired.toml" --yes
    check_eq "apply of w! for two guests exits 1 (xl cannot)" 1 "$XD_RC"
    check_match "it says toolstack xl cannot attach w!" "*xl*w!*" "$XD_ERR"
    check_eq "xenstore's backends are unchanged" "$xs_before" "$(xenstore-ls -f /local/domain/0/backend 2>&1)"
    xd state-w state --json
    check_eq "no vdisk was made" 0 "$(python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("vdisks", [])))' <<< "$XD_OUT")"
else
    xd apply-w apply "$R/desired.toml" --yes
    check_eq "apply of w! to both guests exits 0" 0 "$XD_RC"
    evidence shared-w
    check_eq "guest1 sees xvdb read-write" "4096:0" "$(guest_wait_disk guest1 xvdb present 20)"
    check_eq "guest2 sees xvdb read-write" "4096:0" "$(guest_wait_disk guest2 xvdb present 20)"
    gcmd guest1 write xvdb 512 "$mark"
    gcmd guest2 read xvdb 512 ${#mark}
    check_eq "guest2 reads what guest1 wrote" "$mark" "$G_OUT"
    for g in guest1 guest2; do
        check_eq "$g's backend is connected" "" "$(connected "$(domid $g)")"
    done
    xd replan-w plan "$R/desired.toml"
    check_eq "plan after w! exits 0" 0 "$XD_RC"
fi

desired r
xd apply-r apply "$R/desired.toml" --yes
check_eq "apply of r to both guests exits 0" 0 "$XD_RC"
evidence shared-r
check_eq "guest1 sees xvdb read-only" "4096:1" "$(guest_wait_disk guest1 xvdb present 20)"
check_eq "guest2 sees xvdb read-only" "4096:1" "$(guest_wait_disk guest2 xvdb present 20)"
if [ "$toolstack" = xl ]; then
    # nobody wrote it yet: dom0 does, on the pool device
    read -r _ pdev poff _ < <(vdisk_runs sh)
    dom0_write "$pdev" $((poff + 512)) "$mark"
fi
for g in guest1 guest2; do
    gcmd $g read xvdb 512 ${#mark}
    check_eq "$g reads the data" "$mark" "$G_OUT"
    gcmd $g write xvdb 1024 "rx-must-not-land"
    check "$g cannot write" test "$G_STATUS" != 0
done
xd replan-r plan "$R/desired.toml"
check_eq "plan after r exits 0" 0 "$XD_RC"
