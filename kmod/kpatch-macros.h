/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-macros.h: the macros of kpatch's patch author guide, for patches written for
 * kpatch, so they build unchanged. Include it from the patched kernel source file
 * ("kpatch-macros.h": kpatchbuild puts it on the kernel's include path while it compiles
 * patched objects).
 *
 * Callbacks, in the patched file, apply to the object that file is linked into (vmlinux,
 * or its module):
 *
 *	static int my_pre_patch(patch_object *obj) { return 0; }
 *	KPATCH_PRE_PATCH_CALLBACK(my_pre_patch);
 *
 * Each macro leaves a pointer to the function in a section of its own, which the differ
 * reads: it carries the function into the patch and the module registers it in the
 * klp_object's callbacks. An object may have callbacks and no changed function.
 *
 * KPATCH_IGNORE_FUNCTION(fn) and KPATCH_IGNORE_SECTION("name") tell the differ to treat a
 * function, or a section's contents, as unchanged (a debug helper the fix touched, say).
 * The shadow-variable API is the kernel's (klp_shadow_*, <linux/livepatch.h>);
 * kpatchbuild.h adds the kpb_shadow_* shorthands.
 */
#ifndef KPATCHBUILD_KPATCH_MACROS_H
#define KPATCHBUILD_KPATCH_MACROS_H

#include <linux/compiler.h>
#include <linux/livepatch.h>

#include "kpatchbuild.h"

typedef struct klp_object patch_object;

/* One pointer per use; the unique name lets a file register several kinds. */
#define __KPB_MARK(kind, type, fn)						\
	static type __PASTE(__kpb_##kind##_, __LINE__)				\
		__attribute__((__used__, __section__(".kpatchbuild." #kind))) = (fn)

#define KPATCH_PRE_PATCH_CALLBACK(fn)	__KPB_MARK(pre_patch, kpb_pre_patch_t, fn)
#define KPATCH_POST_PATCH_CALLBACK(fn)	__KPB_MARK(post_patch, kpb_post_patch_t, fn)
#define KPATCH_PRE_UNPATCH_CALLBACK(fn)	__KPB_MARK(pre_unpatch, kpb_pre_unpatch_t, fn)
#define KPATCH_POST_UNPATCH_CALLBACK(fn) __KPB_MARK(post_unpatch, kpb_post_unpatch_t, fn)

/*
 * The older load/unload hooks (void fn(void)): run after the patch is applied and before
 * it is removed, as post-patch and pre-unpatch callbacks.
 */
#define KPATCH_LOAD_HOOK(fn)							\
	static void __kpb_load_hook_##fn(patch_object *obj) { fn(); }		\
	KPATCH_POST_PATCH_CALLBACK(__kpb_load_hook_##fn)
#define KPATCH_UNLOAD_HOOK(fn)							\
	static void __kpb_unload_hook_##fn(patch_object *obj) { fn(); }	\
	KPATCH_PRE_UNPATCH_CALLBACK(__kpb_unload_hook_##fn)

#define KPATCH_IGNORE_FUNCTION(fn)						\
	static void *__PASTE(__kpb_ignore_function_, __LINE__)			\
		__attribute__((__used__, __section__(".kpatchbuild.ignore_function"))) =	\
		(void *)(fn)
#define KPATCH_IGNORE_SECTION(name)						\
	static const char *__PASTE(__kpb_ignore_section_, __LINE__)		\
		__attribute__((__used__, __section__(".kpatchbuild.ignore_section"))) =	\
		(name)

/* Forcing an unsafe change through is not offered: the differ's refusal names the remedy. */
#define KPATCH_FORCE_UNSAFE(fn)							\
	_Static_assert(0, "KPATCH_FORCE_UNSAFE(" #fn ") is not supported by kpatchbuild")

#endif /* KPATCHBUILD_KPATCH_MACROS_H */
