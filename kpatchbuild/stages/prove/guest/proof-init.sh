#!/bin/sh
# /init of a kpatchbuild proof: each step prints KPB-BEGIN/KPB-STEP lines for the host.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
LP=/sys/kernel/livepatch/$PATCH_NAME
TICKS=$((WAIT_SECONDS * 10))

begin() { CURRENT=$1; echo "KPB-BEGIN $1"; }
# A step's detail stays on its marker line, whatever the commands it quotes printed.
oneline() { echo "$*" | tr '\n' ' '; }
ok() { echo "KPB-STEP $CURRENT ok $(oneline "$*")"; }
finish() {
    echo "KPB-INFO taint-end $(cat /proc/sys/kernel/tainted 2>/dev/null)"
    echo "KPB-DMESG-BEGIN"
    dmesg
    echo "KPB-DMESG-END"
    echo "KPB-END"
    reboot -f
    sleep 60
}
fail() { echo "KPB-STEP $CURRENT fail $(oneline "$*")"; finish; }

# run_check: the recipe's check, its output prefixed so it can't pass for kernel messages.
run_check() {
    sh /kpb/check.sh > /tmp/check.out 2>&1
    CHECK_STATUS=$?
    sed 's/^/KPB-OUT /' /tmp/check.out
    return $CHECK_STATUS
}
expect_check_fails() {
    if run_check; then fail "the check passed (exit 0) $1; it must fail"; fi
    ok "check failed as expected (exit $CHECK_STATUS)"
}
expect_check_passes() {
    run_check || fail "the check failed (exit $CHECK_STATUS) $1; it must pass"
    ok "check passed"
}
# wait_until CONDITION...: poll every 0.1 s until CONDITION holds, at most WAIT_SECONDS.
wait_until() {
    i=0
    until "$@"; do
        i=$((i + 1))
        [ $i -gt $TICKS ] && return 1
        sleep 0.1
    done
}
transition_done() { [ "$(cat $LP/transition 2>/dev/null)" = 0 ]; }
transition_done_or_gone() { [ ! -e $LP/transition ] || transition_done; }
sysfs_gone() { [ ! -e $LP ]; }
try_rmmod() { rmmod $PATCH_NAME 2>/tmp/rmmod.err; }

begin mount
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
    || fail "could not mount proc, sysfs and devtmpfs"
echo "KPB-INFO taint-boot $(cat /proc/sys/kernel/tainted)"
[ -d /sys/kernel/livepatch ] || fail "no /sys/kernel/livepatch: the kernel lacks CONFIG_LIVEPATCH"
ok "kernel $(uname -r)"

for module in /kpb/preload/*.ko; do
    [ -e "$module" ] || continue
    name=$(basename "$module" .ko | sed "s/^[0-9]*-//" | tr - _)
    begin "preload:$name"
    out=$(insmod "$module" 2>&1) || fail "insmod $module failed (exit $?) $out"
    ok "loaded"
done

if [ -e /kpb/check.sh ]; then
    begin check-before
    expect_check_fails "before the patch"
fi

# Copies of the module the kernel must refuse (unsigned, signed by a key it does not trust),
# each before the module itself, so that a wrong acceptance shows as this step's failure.
for module in /kpb/refused/*.ko; do
    [ -e "$module" ] || continue
    label=$(basename "$module" .ko | sed "s/^[0-9]*-//")
    begin "refused:$label"
    enforced=$(cat /sys/module/module/parameters/sig_enforce 2>/dev/null)
    [ "$enforced" = Y ] || fail "module.sig_enforce reads '$enforced', not Y"
    if out=$(insmod "$module" 2>&1); then
        rmmod $PATCH_NAME 2>/dev/null
        fail "the kernel loaded $(basename "$module"), which it must refuse"
    fi
    ok "$out"
done

begin insmod
out=$(insmod /kpb/$MODULE_FILE 2>&1) || fail "insmod $MODULE_FILE failed (exit $?) $out"
[ -d $LP ] || fail "loaded, but there is no $LP (patch name $PATCH_NAME)"
ok "enabled=$(cat $LP/enabled)"

begin transition-enable
wait_until transition_done \
    || fail "transition still $(cat $LP/transition 2>&1) after ${WAIT_SECONDS}s"
ok "transition=0"

if [ -e /kpb/check.sh ]; then
    begin check-patched
    expect_check_passes "with the patch applied"
fi

begin disable
echo 0 > $LP/enabled || fail "could not write 0 to $LP/enabled"
ok "enabled <- 0"

begin transition-disable
wait_until transition_done_or_gone \
    || fail "transition still $(cat $LP/transition 2>&1) after ${WAIT_SECONDS}s"
ok "transition done"

begin sysfs-removed
wait_until sysfs_gone || fail "$LP still there after ${WAIT_SECONDS}s"
ok "$LP removed"

begin rmmod
# The module's last reference goes just after its sysfs directory: retry briefly.
wait_until try_rmmod || fail "rmmod $PATCH_NAME: $(cat /tmp/rmmod.err)"
ok "unloaded"

if [ -e /kpb/check.sh ]; then
    begin check-after
    expect_check_fails "after the patch was removed"
fi

finish
