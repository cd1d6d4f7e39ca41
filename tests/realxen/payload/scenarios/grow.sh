# grow REALISE: a vdisk grows while attached; the guest sees the new size
# and keeps its data.
. /run/payload/lib.sh
realise=$1
need_guest guest1
dev=$(pool_loop pool0 16) || fatal "losetup failed"
xd init init || fatal "init failed"
desired() { # desired SIZE
    cat > "$R/desired.toml" << EOF2
[settings]
toolstack = "xl"
realise = "$realise"
[pools.p]
extent_size = "1MiB"
devices = ["$dev"]
[vdisks.g]
pool = "p"
size = "$1"
[domains.guest1.disks]
xvdb = { source = "vdisk:g", mode = "w" }
EOF2
}
desired 4MiB
xd apply apply "$R/desired.toml" --yes
check_eq "apply of 4 MiB exits 0" 0 "$XD_RC"
check_eq "guest sees 4 MiB" "8192:0" "$(guest_wait_disk guest1 xvdb present 20)"
mark="rx-grow-$RANDOM"
gcmd guest1 write xvdb 3145728 "$mark"
desired 8MiB
xd plan-grow plan "$R/desired.toml"
check_eq "plan of the growth exits 2" 2 "$XD_RC"
xd grow apply "$R/desired.toml" --yes
check_eq "apply of the growth exits 0" 0 "$XD_RC"
evidence grown
n=20
while [ "$(guest_disk guest1 xvdb)" != "16384:0" ] && ((n-- > 0)); do sleep 1; done
check_eq "guest sees 8 MiB" "16384:0" "$(guest_disk guest1 xvdb)"
gcmd guest1 read xvdb 3145728 ${#mark}
check_eq "the data before the growth is still there" "$mark" "$G_OUT"
gcmd guest1 write xvdb 7340032 "$mark-new"
gcmd guest1 read xvdb 7340032 $((${#mark} + 4))
check_eq "the guest writes and reads the new part" "$mark-new" "$G_OUT"
xd replan plan "$R/desired.toml"
check_eq "plan after the growth exits 0" 0 "$XD_RC"
