# adopt: a host set up by hand with xl block-attach (a raw image file and a
# phy: loop device) is adopted with `xendisk generate`; plan then finds
# nothing to do; xendisk detaches one disk and xl block-list agrees; then
# xendisk's xenstore toolstack detaches the image file xl attached, and the
# loop device the hotplug script made for it is released.
. /run/payload/lib.sh
need_guest guest1
truncate -s 8M "$W/image.raw"
truncate -s 4M "$W/phy.img"
loopdev=$(losetup --find --show "$W/phy.img") || fatal "losetup failed"
xl block-attach guest1 "format=raw,vdev=xvdb,access=rw,target=$W/image.raw"
check_eq "xl block-attach of a raw file exits 0" 0 "$?"
xl block-attach guest1 "format=raw,vdev=xvdc,access=ro,target=$loopdev"
check_eq "xl block-attach of a phy: device exits 0" 0 "$?"
check_eq "guest sees xvdb" "16384:0" "$(guest_wait_disk guest1 xvdb present 20)"
check_eq "guest sees xvdc read-only" "8192:1" "$(guest_wait_disk guest1 xvdc present 20)"
evidence by-xl

xd init init || fatal "init failed"
xd generate generate -o "$R/adopted.toml"
check_eq "generate exits 0" 0 "$XD_RC"
cat "$R/adopted.toml" >&2
check_match "generate lists the file" "*$W/image.raw*" "$(cat "$R/adopted.toml")"
check_match "generate lists the phy: device" "*$loopdev*" "$(cat "$R/adopted.toml")"
xd plan plan "$R/adopted.toml"
check_eq "plan of the generated file exits 0" 0 "$XD_RC"
check_match "it finds no changes" "No changes*" "$XD_OUT"

# without the table [domains.guest1.disks.xvdc] (up to the next table)
awk '/^\[/ { skip = ($0 == "[domains.guest1.disks.xvdc]") } !skip' "$R/adopted.toml" > "$R/without-xvdc.toml"
xd detach apply "$R/without-xvdc.toml" --yes
check_eq "apply without xvdc exits 0" 0 "$XD_RC"
evidence detached
devs=$(xl block-list guest1 | awk 'NR > 1 { print $1 }' | xargs)
check_eq "xl block-list shows xvdb only" 51728 "$devs"
check "guest no longer sees xvdc" guest_wait_disk guest1 xvdc absent 20
check_eq "guest still sees xvdb" "16384:0" "$(guest_disk guest1 xvdb)"
xd replan plan "$R/without-xvdc.toml"
check_eq "plan after the detach exits 0" 0 "$XD_RC"

# the image file too, through the xenstore toolstack (the script's `remove`)
awk '/^\[/ { skip = ($0 == "[domains.guest1.disks.xvdb]") } !skip' "$R/without-xvdc.toml" > "$R/without-disks.toml"
printf '\n[domains.guest1.disks]\n' >> "$R/without-disks.toml"
check_match "the hotplug script made a loop device for the image" "*$W/image.raw*" "$(losetup -j "$W/image.raw")"
xd detach-file apply "$R/without-disks.toml" --yes --toolstack xenstore
check_eq "apply without xvdb (toolstack xenstore) exits 0" 0 "$XD_RC"
check "guest no longer sees xvdb" guest_wait_disk guest1 xvdb absent 20
check_eq "xl block-list shows nothing" "" "$(xl block-list guest1 | awk 'NR > 1 { print $1 }' | xargs)"
check_eq "the loop device over the image is released" "" "$(losetup -j "$W/image.raw")"
xd replan-empty plan "$R/without-disks.toml"
check_eq "plan after that exits 0" 0 "$XD_RC"
