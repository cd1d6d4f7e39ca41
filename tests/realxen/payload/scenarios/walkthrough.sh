# walkthrough REALISE TOOLSTACK
#
# A pool on a loop device, one vdisk of 8 MiB attached read-write to guest1
# at xvdb. Markers dom0 writes on the pool device at each run's first and
# last sector must be what the guest reads at the matching offsets of xvdb;
# what the guest writes, dom0 must find on the pool device; then plan finds
# nothing to do; then the vdisk detached through xendisk is gone from the
# guest.
. /run/payload/lib.sh
realise=$1 toolstack=$2

need_guest guest1
dev=$(pool_loop pool0 32) || fatal "losetup failed"
log "pool device $dev"

xd init init
check_eq "init exits 0" 0 "$XD_RC"

cat > "$R/desired.toml" << EOF
[settings]
sharing = "exclusive"
toolstack = "$toolstack"
realise = "$realise"

[pools.p0]
extent_size = "1MiB"
devices = ["$dev"]

[vdisks.wt]
pool = "p0"
size = "8MiB"

[domains.guest1.disks]
xvdb = { source = "vdisk:wt", mode = "w" }
EOF
xd plan plan "$R/desired.toml"
check_eq "first plan exits 2 (changes)" 2 "$XD_RC"
xd apply apply "$R/desired.toml" --yes
check_eq "apply exits 0" 0 "$XD_RC"
evidence attached

case $realise in
dm) check "vdisk realised by device-mapper" dmsetup status xendisk-wt ;;
loop) check "vdisk realised by a loop device over the pool device" \
    bash -c "losetup --list --noheadings -O BACK-FILE | grep -qx '[[:space:]]*$dev'" ;;
esac

seen=$(guest_wait_disk guest1 xvdb present 20)
check_eq "guest sees xvdb, 8 MiB read-write" "16384:0" "$seen"

mapfile -t runs < <(vdisk_runs wt)
check "vdisk has extents" test "${#runs[@]}" -gt 0
i=0
for run in "${runs[@]}"; do
    read -r voff pdev poff len <<< "$run"
    for at in 0 $((len - 512)); do
        mark="rx-$realise-$toolstack-run$i-at$at-$RANDOM"
        dom0_write "$pdev" $((poff + at)) "$mark"
        gcmd guest1 read xvdb $((voff + at)) ${#mark}
        check_eq "guest reads dom0's marker of run $i at vdisk byte $((voff + at))" "$mark" "$G_OUT"
    done
    i=$((i + 1))
done

# the other way: the guest writes at 5 MiB + 1 KiB, dom0 finds it in place
off=$((5 * 1048576 + 1024))
mark="rx-guest-wrote-$RANDOM"
gcmd guest1 write xvdb "$off" "$mark"
check_eq "guest writes xvdb" 0 "$G_STATUS"
found=
for run in "${runs[@]}"; do
    read -r voff pdev poff len <<< "$run"
    if ((off >= voff && off < voff + len)); then found=$(dom0_read "$pdev" $((poff + off - voff)) ${#mark}); fi
done
check_eq "dom0 reads the guest's write on the pool device" "$mark" "$found"

xd replan plan "$R/desired.toml"
check_eq "plan after apply exits 0" 0 "$XD_RC"
check_match "plan after apply finds no changes" "No changes*" "$XD_OUT"

# detach through xendisk: the vdisk stays, the guest loses xvdb
sed -i '/^\[domains.guest1.disks\]/,$d' "$R/desired.toml"
echo '[domains.guest1.disks]' >> "$R/desired.toml"
xd detach apply "$R/desired.toml" --yes
check_eq "apply of the detach exits 0" 0 "$XD_RC"
check "guest no longer sees xvdb" guest_wait_disk guest1 xvdb absent 20
xd replan-detached plan "$R/desired.toml"
check_match "plan after the detach finds no changes" "No changes*" "$XD_OUT"
evidence detached
