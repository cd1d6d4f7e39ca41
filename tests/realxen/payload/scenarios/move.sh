# move: a vdisk goes from guest1 to guest2; guest2 finds what guest1 wrote.
. /run/payload/lib.sh
need_guest guest1
need_guest guest2
dev=$(pool_loop pool0 16) || fatal "losetup failed"
xd init init || fatal "init failed"
desired() { # desired GUEST
    cat > "$R/desired.toml" << EOF2
[settings]
toolstack = "xl"

[pools.p]
extent_size = "1MiB"
devices = ["$dev"]

[vdisks.mv]
pool = "p"
size = "4MiB"

[domains.guest1.disks]
$([ "$1" = guest1 ] && echo 'xvdb = { source = "vdisk:mv", mode = "w" }')
[domains.guest2.disks]
$([ "$1" = guest2 ] && echo 'xvdb = { source = "vdisk:mv", mode = "w" }')
EOF2
}
desired guest1
xd apply apply "$R/desired.toml" --yes
check_eq "apply to guest1 exits 0" 0 "$XD_RC"
check_eq "guest1 sees xvdb" "8192:0" "$(guest_wait_disk guest1 xvdb present 20)"
mark="rx-move-$RANDOM"
gcmd guest1 write xvdb 1048576 "$mark"
check_eq "guest1 writes" 0 "$G_STATUS"

desired guest2
xd plan-move plan "$R/desired.toml"
check_eq "plan of the move exits 2" 2 "$XD_RC"
xd move apply "$R/desired.toml" --yes
check_eq "apply of the move exits 0" 0 "$XD_RC"
evidence moved
check "guest1 no longer sees xvdb" guest_wait_disk guest1 xvdb absent 20
check_eq "guest2 sees xvdb" "8192:0" "$(guest_wait_disk guest2 xvdb present 20)"
gcmd guest2 read xvdb 1048576 ${#mark}
check_eq "guest2 reads what guest1 wrote" "$mark" "$G_OUT"
xd replan plan "$R/desired.toml"
check_eq "plan after the move exits 0" 0 "$XD_RC"
