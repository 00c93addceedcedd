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
 * KPATCH_FORCE_UNSAFE, KPATCH_PRINTK(_DEFERRED), KPATCH_STATIC_CALL and kpatch's old
 * kpatch_shadow_{alloc,get,free} by name are here too. The shadow-variable API is the
 * kernel's (klp_shadow_*, <linux/livepatch.h>); kpatchbuild.h adds kpb_shadow_* shorthands.
 * Objects built against kpatch's own kpatch-macros.h (its `.kpatch.callbacks.*`,
 * `.kpatch.ignore.*` and `.kpatch.force` sections) are read the same way.
 */
#ifndef KPATCHBUILD_KPATCH_MACROS_H
#define KPATCHBUILD_KPATCH_MACROS_H

#include <linux/compiler.h>
#include <linux/jiffies.h>
#include <linux/livepatch.h>
#include <linux/printk.h>
#include <linux/static_call.h>

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

/*
 * kpatch's core module once switched such a function without the consistency check.
 * Livepatch has no per-function immediate mode (since Linux 4.16): the mark is read, said
 * in the diff's notes, and the function is patched like any other, as kpatch does too.
 */
#define KPATCH_FORCE_UNSAFE(fn)							\
	static void *__PASTE(__kpb_force_, __LINE__)				\
		__attribute__((__used__, __section__(".kpatchbuild.force"))) = (void *)(fn)

/*
 * printk() is __cold: a path calling it directly may be moved out of line with what it
 * calls, changing more functions than the fix does. A test the compiler cannot fold keeps
 * the call on a path of its own.
 */
#define KPATCH_PRINTK(_fmt, ...)						\
({										\
	if (jiffies)								\
		printk(_fmt, ## __VA_ARGS__);					\
})
#define KPATCH_PRINTK_DEFERRED(_fmt, ...)					\
({										\
	if (jiffies)								\
		printk_deferred(_fmt, ## __VA_ARGS__);				\
})

/*
 * A static call whose key lives in a module cannot stay a static call in the patch (the
 * loader reads the site before livepatch binds the key): call through the key instead.
 */
#define KPATCH_STATIC_CALL(name)						\
	((typeof(STATIC_CALL_TRAMP(name)) *)(STATIC_CALL_KEY(name).func))

/*
 * kpatch's first shadow-variable API named variables by string; the kernel's names them
 * by number. The string is turned into a number (FNV-1a), the same one in every file of
 * the patch, so code written for kpatch_shadow_* keeps working over klp_shadow_*.
 */
static inline unsigned long __kpb_shadow_id(const char *var)
{
	unsigned long hash = 2166136261UL;

	while (*var)
		hash = (hash ^ (unsigned char)*var++) * 16777619UL;
	return hash;
}

static inline void *kpatch_shadow_alloc(void *obj, char *var, size_t size, gfp_t gfp)
{
	return klp_shadow_alloc(obj, __kpb_shadow_id(var), size, gfp, NULL, NULL);
}

static inline void *kpatch_shadow_get(void *obj, char *var)
{
	return klp_shadow_get(obj, __kpb_shadow_id(var));
}

static inline void kpatch_shadow_free(void *obj, char *var)
{
	klp_shadow_free(obj, __kpb_shadow_id(var), NULL);
}

#endif /* KPATCHBUILD_KPATCH_MACROS_H */
