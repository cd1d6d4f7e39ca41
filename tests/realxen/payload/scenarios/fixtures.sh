# fixtures: the xenstore nodes of a vbd as `xl block-attach` makes it
# (backend, frontend, libxl's record), then of xendisk's twin made with
# toolstack = "xenstore" the same way (same device, vdev and mode), with
# permissions. They are copied into tests/realxen/fixtures/ by hand.
. /run/payload/lib.sh
need_guest guest1
id=$(domid guest1)
truncate -s 4M "$W/fixture.img"
loopdev=$(losetup --find --show "$W/fixture.img") || fatal "losetup failed"
xl block-attach guest1 "format=raw,vdev=xvdc,access=rw,target=$loopdev"
check_eq "xl block-attach exits 0" 0 "$?"
check_eq "guest sees xvdc (xl)" "8192:0" "$(guest_wait_disk guest1 xvdc present 20)"
xs_vbd "$id" 51744 "$R/xl-block-attach.xenstore"
xl block-list guest1 > "$R/xl-block-attach.block-list"
xl block-detach guest1 xvdc
check_eq "xl block-detach exits 0" 0 "$?"
check "guest loses xvdc (xl)" guest_wait_disk guest1 xvdc absent 20

xd init init || fatal "init failed"
cat > "$R/desired.toml" << EOF2
[settings]
toolstack = "xenstore"
[domains.guest1.disks]
xvdc = { source = "phy:$loopdev", mode = "w" }
EOF2
xd attach apply "$R/desired.toml" --yes
check_eq "xendisk apply (toolstack xenstore) exits 0" 0 "$XD_RC"
check_eq "guest sees xvdc (xendisk)" "8192:0" "$(guest_wait_disk guest1 xvdc present 20)"
xs_vbd "$id" 51744 "$R/xendisk-xenstore.xenstore"
xl block-list guest1 > "$R/xendisk-xenstore.block-list"
# the same nodes, whatever their values? (names and permissions' shape)
shape() { sed -E 's/ = "[^"]*"//; s/\(n[0-9]+/(nD/; s/,[rwbn][0-9]+/,xD/g' "$1" | sed -E "s|/$id/|/D/|g" | sort; }
shape "$R/xl-block-attach.xenstore" > "$R/xl.shape"
shape "$R/xendisk-xenstore.xenstore" > "$R/xendisk.shape"
diff -u "$R/xl.shape" "$R/xendisk.shape" > "$R/shape.diff"
check "xendisk's twin has the nodes xl makes (shape.diff)" test ! -s "$R/shape.diff"
xd replan plan "$R/desired.toml"
check_eq "plan after apply exits 0" 0 "$XD_RC"
# xl knows the disk xendisk made: it lists it and detaches it, leaving nothing.
check_match "xl block-list lists xendisk's xvdc" "*51744*" "$(xl block-list guest1)"
xl block-detach guest1 xvdc
check_eq "xl block-detach of xendisk's xvdc exits 0" 0 "$?"
check "guest loses xvdc (xl's detach of xendisk's disk)" guest_wait_disk guest1 xvdc absent 20
check_eq "xl left nothing of it in xenstore" "" \
    "$( (xenstore-ls -f "/local/domain/0/backend/vbd/$id"; xenstore-ls -f "/libxl/$id") 2> /dev/null | grep /51744)"
xd reattach apply "$R/desired.toml" --yes
check_eq "xendisk attaches it again (toolstack xenstore) exits 0" 0 "$XD_RC"
check_eq "guest sees xvdc again" "8192:0" "$(guest_wait_disk guest1 xvdc present 20)"
sed -i '/^xvdc/d' "$R/desired.toml"
xd detach apply "$R/desired.toml" --yes
check_eq "xendisk detach (toolstack xenstore) exits 0" 0 "$XD_RC"
check "guest loses xvdc (xendisk)" guest_wait_disk guest1 xvdc absent 20
xs_vbd "$id" 51744 "$R/xendisk-xenstore-after-detach.xenstore"
