# refused: an attachment Debian's block hotplug script refused. `xl
# block-attach` of a device dom0 has mounted fails, but its vbd stays in
# xenstore (backend state 2, hotplug-status "busy", hotplug-error says why)
# and the guest has no disk. xendisk must not take it for a working
# attachment: a desired file that asks for it is not "No changes" and,
# once dom0 let go of the device, apply makes it work; a desired file
# without it detaches it.
. /run/payload/lib.sh
need_guest guest1
id=$(domid guest1)
dev=$(pool_loop busy 4) || fatal "losetup failed"
mkfs.ext4 -q "$dev" || fatal "mkfs failed"
mkdir -p "$W/mnt" && mount "$dev" "$W/mnt" || fatal "cannot mount $dev"
xl block-attach guest1 "format=raw,vdev=xvdb,access=rw,target=$dev"
check "xl block-attach of a device dom0 mounted fails" test $? -ne 0
be=/local/domain/0/backend/vbd/$id/51728
check_eq "its backend stays, hotplug-status busy" busy "$(xenstore-read "$be/hotplug-status" 2> /dev/null)"
check_eq "the guest has no xvdb" "" "$(guest_disk guest1 xvdb)"
evidence refused
umount "$W/mnt"

xd init init || fatal "init failed"
cat > "$R/wanted.toml" << EOF
[settings]
toolstack = "xl"
[domains.guest1.disks]
xvdb = { source = "phy:$dev", mode = "w" }
EOF
xd plan-wanted plan "$R/wanted.toml"
check "a plan that wants it is not \"No changes\"" test "$XD_RC" -ne 0
xd generate generate
check_eq "generate exits 0" 0 "$XD_RC"
# dom0 no longer mounts it: xendisk clears the refused vbd and attaches anew
xd apply-wanted apply "$R/wanted.toml" --yes
check_eq "apply of it, now that dom0 unmounted the device, exits 0" 0 "$XD_RC"
check_eq "the guest sees xvdb" "8192:0" "$(guest_wait_disk guest1 xvdb present 20)"
check_eq "its backend is connected" "" "$(connected "$id")"
xd plan-wanted-again plan "$R/wanted.toml"
check_eq "plan then exits 0" 0 "$XD_RC"

cat > "$R/none.toml" << EOF
[settings]
toolstack = "xl"
[domains.guest1.disks]
EOF
xd plan-none plan "$R/none.toml"
check_eq "a plan without it exits 2 (detach)" 2 "$XD_RC"
xd apply-none apply "$R/none.toml" --yes
check_eq "apply without it exits 0" 0 "$XD_RC"
check "its backend is gone" bash -c "! xenstore-exists $be"
check "the guest no longer sees xvdb" guest_wait_disk guest1 xvdb absent 20
xd plan-none-again plan "$R/none.toml"
check_eq "plan after the detach exits 0" 0 "$XD_RC"
