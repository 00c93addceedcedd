#!/bin/sh
# /init of a guest script run: mount the kernel's file systems, run /kpb/script.sh, report.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
    || echo "KPB-SCRIPT-MOUNT-FAILED"
echo "KPB-SCRIPT-BEGIN"
sh /kpb/script.sh
echo "KPB-SCRIPT-END $?"
reboot -f
sleep 60
