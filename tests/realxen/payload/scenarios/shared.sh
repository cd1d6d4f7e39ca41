# shared TOOLSTACK: one vdisk attached w! to both guests (each sees the
# other's writes), then r to both (both see it read-only).
. /run/payload/lib.sh
toolstack=$1
need_guest guest1
need_guest guest2
dev=$(pool_loop pool0 16) || fatal "losetup failed"
xd init init || fatal "init failed"
desired() { # desired MODE
    cat > "$R/desired.toml" << EOF2
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
EOF2
}
desired 'w!'
xd apply-w apply "$R/desired.toml" --yes
check_eq "apply of w! to both guests exits 0" 0 "$XD_RC"
evidence shared-w
check_eq "guest1 sees xvdb read-write" "4096:0" "$(guest_wait_disk guest1 xvdb present 20)"
check_eq "guest2 sees xvdb read-write" "4096:0" "$(guest_wait_disk guest2 xvdb present 20)"
mark="rx-shared-$RANDOM"
gcmd guest1 write xvdb 512 "$mark"
gcmd guest2 read xvdb 512 ${#mark}
check_eq "guest2 reads what guest1 wrote" "$mark" "$G_OUT"
for g in guest1 guest2; do
    check_eq "$g's backend is connected" "" "$(connected "$(domid $g)")"
done
xd replan-w plan "$R/desired.toml"
check_eq "plan after w! exits 0" 0 "$XD_RC"

desired r
xd apply-r apply "$R/desired.toml" --yes
check_eq "apply of r to both guests exits 0" 0 "$XD_RC"
evidence shared-r
check_eq "guest1 sees xvdb read-only" "4096:1" "$(guest_wait_disk guest1 xvdb present 20)"
check_eq "guest2 sees xvdb read-only" "4096:1" "$(guest_wait_disk guest2 xvdb present 20)"
gcmd guest2 read xvdb 512 ${#mark}
check_eq "guest2 still reads the data" "$mark" "$G_OUT"
xd replan-r plan "$R/desired.toml"
check_eq "plan after r exits 0" 0 "$XD_RC"
