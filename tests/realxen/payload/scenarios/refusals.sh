# refusals: what xendisk must refuse (exit 3) on a real host, changing
# nothing: a pool device dom0 has mounted, and two guests writing one vdisk
# under sharing = "exclusive".
. /run/payload/lib.sh
need_guest guest1
need_guest guest2
dev=$(pool_loop pool0 16) || fatal "losetup failed"
xd init init || fatal "init failed"

# 1. the pool device is mounted in dom0
mkfs.ext4 -q "$dev" && mkdir -p "$W/mnt" && mount "$dev" "$W/mnt" || fatal "cannot mount $dev"
cat > "$R/mounted.toml" << EOF
[settings]
toolstack = "xl"
[pools.p]
extent_size = "1MiB"
devices = ["$dev"]
[vdisks.v]
pool = "p"
size = "2MiB"
[domains.guest1.disks]
xvdb = { source = "vdisk:v", mode = "w" }
EOF
xd state-before state --json
before=$XD_OUT
xs_before=$(xenstore-ls -f /local/domain/0/backend 2>&1)
dev_before=$(dmsetup ls; losetup --list --noheadings)
xd plan-mounted plan "$R/mounted.toml"
check_eq "plan of a pool on a mounted device exits 3" 3 "$XD_RC"
xd apply-mounted apply "$R/mounted.toml" --yes
check_eq "apply of a pool on a mounted device exits 3" 3 "$XD_RC"
check_match "the refusal names the mount" "*mount*" "$XD_OUT $XD_ERR"
xd state-after state --json
check_eq "the state DB is unchanged" "$before" "$XD_OUT"
check_eq "xenstore's backends are unchanged" "$xs_before" "$(xenstore-ls -f /local/domain/0/backend 2>&1)"
check_eq "no device-mapper or loop device was made" "$dev_before" "$(dmsetup ls; losetup --list --noheadings)"
check_eq "guest1 has no xvdb" "" "$(guest_disk guest1 xvdb)"
umount "$W/mnt"

# 2. two writers of one vdisk, exclusive sharing: first a vdisk with one
# writer, then a second writer is asked for
dev2=$(pool_loop pool1 16) || fatal "losetup failed"
writers() { # writers WRITERS-TOML
    cat > "$R/writers.toml" << EOF
[settings]
toolstack = "xl"
sharing = "exclusive"
[pools.q]
extent_size = "1MiB"
devices = ["$dev2"]
[vdisks.w]
pool = "q"
size = "2MiB"
$1
EOF
}
writers '[domains.guest1.disks]
xvdb = { source = "vdisk:w", mode = "w" }'
xd apply-one-writer apply "$R/writers.toml" --yes
check_eq "apply of one writer exits 0" 0 "$XD_RC"
check_eq "guest1 sees xvdb" "4096:0" "$(guest_wait_disk guest1 xvdb present 20)"
writers '[domains.guest1.disks]
xvdb = { source = "vdisk:w", mode = "w" }
[domains.guest2.disks]
xvdb = { source = "vdisk:w", mode = "w" }'
xd state-before2 state --json
before=$XD_OUT
xs_before=$(xenstore-ls -f /local/domain/0/backend 2>&1)
dev_before=$(dmsetup ls; losetup --list --noheadings)
xd plan-two-writers plan "$R/writers.toml"
check_eq "plan of two writers exits 3" 3 "$XD_RC"
xd apply-two-writers apply "$R/writers.toml" --yes
check_eq "apply of two writers exits 3" 3 "$XD_RC"
xd state-after2 state --json
check_eq "the state DB is unchanged" "$before" "$XD_OUT"
check_eq "xenstore's backends are unchanged" "$xs_before" "$(xenstore-ls -f /local/domain/0/backend 2>&1)"
check_eq "no device-mapper or loop device was made or removed" "$dev_before" "$(dmsetup ls; losetup --list --noheadings)"
check_eq "guest2 has no xvdb" "" "$(guest_disk guest2 xvdb)"
check_eq "guest1 still has xvdb" "4096:0" "$(guest_disk guest1 xvdb)"
