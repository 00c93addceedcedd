// SPDX-License-Identifier: GPL-2.0
/*
 * Callbacks of the callbacks recipe: /proc/kpatch-callbacks exists exactly while the patch
 * is applied, made after patching and removed before unpatching.
 */
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include "kpatchbuild.h"

static struct proc_dir_entry *state_entry;

static int state_show(struct seq_file *m, void *v)
{
	seq_puts(m, "patched\n");
	return 0;
}

static void make_state_entry(struct klp_object *obj)
{
	state_entry = proc_create_single("kpatch-callbacks", 0444, NULL, state_show);
}

static void remove_state_entry(struct klp_object *obj)
{
	proc_remove(state_entry);
}

KPB_POST_PATCH_CALLBACK(vmlinux, make_state_entry);
KPB_PRE_UNPATCH_CALLBACK(vmlinux, remove_state_entry);
