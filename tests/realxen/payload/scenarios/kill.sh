# kill: an apply killed with SIGKILL in the middle of its attaches; the
# next apply converges, and a plan then finds nothing to do.
. /run/payload/lib.sh
need_guest guest1
dev=$(pool_loop pool0 32) || fatal "losetup failed"
xd init init || fatal "init failed"
cat > "$R/desired.toml" << EOF
[settings]
toolstack = "xl"
[pools.p]
extent_size = "1MiB"
devices = ["$dev"]
[vdisks.k1]
pool = "p"
size = "2MiB"
[vdisks.k2]
pool = "p"
size = "2MiB"
[vdisks.k3]
pool = "p"
size = "2MiB"
[domains.guest1.disks]
xvdb = { source = "vdisk:k1", mode = "w" }
xvdc = { source = "vdisk:k2", mode = "w" }
xvdd = { source = "vdisk:k3", mode = "w" }
EOF
id=$(domid guest1)
log "+ xendisk apply (to be killed once the first backend appears)"
xendisk apply "$R/desired.toml" --yes --parallelism 1 > "$R/killed-apply.out" 2>&1 &
pid=$!
# killed as soon as a backend of guest1 exists: in the middle of an attach
if xs_wait "/local/domain/0/backend/vbd/$id" @children 90 && sleep 0.3 && kill -9 "$pid"; then
    record PASS "apply killed in its first attach" ""
else
    record FAIL "apply killed in its first attach" "no backend appeared, or it had finished"
fi
wait "$pid"
echo "killed apply: exit $?" >> "$R/killed-apply.out"
evidence after-kill
xd state-runs state --runs
xd resume apply "$R/desired.toml" --yes
check_eq "the next apply exits 0" 0 "$XD_RC"
evidence converged
for d in xvdb xvdc xvdd; do
    check_eq "guest sees $d" "4096:0" "$(guest_wait_disk guest1 $d present 20)"
done
xd replan plan "$R/desired.toml"
check_eq "plan after the second apply exits 0" 0 "$XD_RC"
check_eq "three backends, no more" 3 "$(vbd_count "$id")"
