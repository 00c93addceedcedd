// SPDX-License-Identifier: GPL-2.0
/* The shadow counters die with the patch: freed once it is fully unpatched. */
#include "kpatchbuild.h"

#define KPATCH_SHADOW_CMDLINE_READS 1

static void free_read_counters(struct klp_object *obj)
{
	kpb_shadow_free_all(KPATCH_SHADOW_CMDLINE_READS);
}

KPB_POST_UNPATCH_CALLBACK(vmlinux, free_read_counters);
