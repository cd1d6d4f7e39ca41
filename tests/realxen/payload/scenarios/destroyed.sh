# destroyed: a guest destroyed with a vdisk attached. The next plan sees it
# as not running (nothing to detach, nothing refused); when it runs again,
# apply gives it its disk back, data kept. Runs last: it destroys guest2.
. /run/payload/lib.sh
need_guest guest2
dev=$(pool_loop pool0 16) || fatal "losetup failed"
xd init init || fatal "init failed"
cat > "$R/desired.toml" << EOF2
[settings]
toolstack = "xl"
[pools.p]
extent_size = "1MiB"
devices = ["$dev"]
[vdisks.d]
pool = "p"
size = "2MiB"
[domains.guest2.disks]
xvdb = { source = "vdisk:d", mode = "w" }
EOF2
xd apply apply "$R/desired.toml" --yes
check_eq "apply exits 0" 0 "$XD_RC"
check_eq "guest2 sees xvdb" "4096:0" "$(guest_wait_disk guest2 xvdb present 20)"
mark="rx-destroyed-$RANDOM"
gcmd guest2 write xvdb 4096 "$mark"
old=$(domid guest2)
xl destroy guest2
check_eq "xl destroy exits 0" 0 "$?"
evidence destroyed
check_eq "no backend is left for the destroyed domain" 0 "$(vbd_count "$old")"
xd plan-destroyed plan "$R/desired.toml"
check_eq "plan with guest2 destroyed exits 0" 0 "$XD_RC"
check_match "plan says guest2 is not running" "*guest2 is not running*" "$XD_OUT"
xd apply-destroyed apply "$R/desired.toml" --yes
check_eq "apply with guest2 destroyed exits 0" 0 "$XD_RC"

need_guest guest2
xd plan-back plan "$R/desired.toml"
check_eq "plan with guest2 back exits 2" 2 "$XD_RC"
xd apply-back apply "$R/desired.toml" --yes
check_eq "apply with guest2 back exits 0" 0 "$XD_RC"
check_eq "guest2 sees xvdb again" "4096:0" "$(guest_wait_disk guest2 xvdb present 20)"
gcmd guest2 read xvdb 4096 ${#mark}
check_eq "the data is still there" "$mark" "$G_OUT"
xd replan plan "$R/desired.toml"
check_eq "plan after that exits 0" 0 "$XD_RC"
