# multirun: a vdisk made of several runs of extents on two pool devices
# (realise = "dm"): each run's first and last sectors, as dom0 marks them on
# the pool devices, are what the guest reads at the matching offsets.
. /run/payload/lib.sh
need_guest guest1
d0=$(pool_loop pool0 4) && d1=$(pool_loop pool1 4) || fatal "losetup failed"
xd init init || fatal "init failed"

# three 1 MiB fillers, then the middle one deleted: the next vdisk has to
# take a hole, then the rest of the first device, then the second device
desired() { # desired VDISKS-TOML DISKS-TOML
    cat > "$R/desired.toml" << EOF2
[settings]
toolstack = "xl"
realise = "dm"

[pools.p]
extent_size = "1MiB"
devices = ["$d0", "$d1"]
$1
[domains.guest1.disks]
$2
EOF2
}
desired '[vdisks.f1]
pool = "p"
size = "1MiB"
[vdisks.f2]
pool = "p"
size = "1MiB"
[vdisks.f3]
pool = "p"
size = "1MiB"
' ''
xd fillers apply "$R/desired.toml" --yes
check_eq "apply of the fillers exits 0" 0 "$XD_RC"
desired '[vdisks.f1]
pool = "p"
size = "1MiB"
[vdisks.f3]
pool = "p"
size = "1MiB"
[vdisks.big]
pool = "p"
size = "5MiB"
' 'xvdc = { source = "vdisk:big", mode = "w" }'
xd apply apply "$R/desired.toml" --yes --allow-destroy
check_eq "apply of the vdisk of several runs exits 0" 0 "$XD_RC"
evidence attached

mapfile -t runs < <(vdisk_runs big)
devices=$(printf '%s\n' "${runs[@]}" | awk '{ print $2 }' | sort -u | wc -l)
check "the vdisk has at least 2 runs" test "${#runs[@]}" -ge 2
check_eq "its runs are on both pool devices" 2 "$devices"
check_eq "guest sees xvdc, 5 MiB read-write" "10240:0" "$(guest_wait_disk guest1 xvdc present 20)"
i=0
for run in "${runs[@]}"; do
    read -r voff pdev poff len <<< "$run"
    for at in 0 $((len - 512)); do
        mark="rx-multirun-$i-$at-$RANDOM"
        dom0_write "$pdev" $((poff + at)) "$mark"
        gcmd guest1 read xvdc $((voff + at)) ${#mark}
        check_eq "guest reads run $i ($pdev byte $((poff + at))) at vdisk byte $((voff + at))" "$mark" "$G_OUT"
    done
    i=$((i + 1))
done
xd replan plan "$R/desired.toml"
check_eq "plan after apply exits 0" 0 "$XD_RC"
