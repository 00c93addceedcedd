#!/bin/sh
/bin/busybox echo KPB-PROBE-OK
/bin/busybox reboot -f
