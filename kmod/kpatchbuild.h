/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatchbuild.h: what a recipe's own C code may use in a kpatchbuild livepatch module.
 *
 * Callbacks: livepatch runs at most one callback of each kind per patched object (vmlinux,
 * or a module by name, '-' spelt '_'), around its (un)patching; pre_patch may refuse the
 * patch by returning an error. Name the object as a C token, outside any function, in a
 * source file the recipe compiles into the module:
 *
 *	static int my_check(struct klp_object *obj) { return 0; }
 *	KPB_PRE_PATCH_CALLBACK(vmlinux, my_check);
 *
 * Shadow variables attach new data to existing objects (a task, an inode) without changing
 * their layout, which a live patch cannot do. Both the patched kernel code and the module's
 * own code may use these helpers; IDs are the caller's choice, unique per kind of data.
 *
 *	struct my_extra *x = kpb_shadow_get_or_alloc(task, MY_ID, sizeof(*x), GFP_KERNEL);
 *	kpb_shadow_free_all(MY_ID);	(in a post-unpatch callback)
 */
#ifndef KPATCHBUILD_H
#define KPATCHBUILD_H

#include <linux/gfp.h>
#include <linux/livepatch.h>

typedef int (*kpb_pre_patch_t)(struct klp_object *obj);
typedef void (*kpb_post_patch_t)(struct klp_object *obj);
typedef void (*kpb_pre_unpatch_t)(struct klp_object *obj);
typedef void (*kpb_post_unpatch_t)(struct klp_object *obj);

/*
 * Each defines the strong kpb_<kind>__<object> that the generated registration reads
 * (it holds a weak, empty one); assigning through the typedef checks the signature.
 */
#define KPB_PRE_PATCH_CALLBACK(object, fn) \
	kpb_pre_patch_t kpb_pre_patch__##object = (fn)
#define KPB_POST_PATCH_CALLBACK(object, fn) \
	kpb_post_patch_t kpb_post_patch__##object = (fn)
#define KPB_PRE_UNPATCH_CALLBACK(object, fn) \
	kpb_pre_unpatch_t kpb_pre_unpatch__##object = (fn)
#define KPB_POST_UNPATCH_CALLBACK(object, fn) \
	kpb_post_unpatch_t kpb_post_unpatch__##object = (fn)

/* A shadow variable of @size zeroed bytes for @obj; NULL if one exists or memory is short. */
static inline void *kpb_shadow_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp)
{
	return klp_shadow_alloc(obj, id, size, gfp, NULL, NULL);
}

/* @obj's shadow variable @id, allocated (zeroed) on first use. */
static inline void *kpb_shadow_get_or_alloc(void *obj, unsigned long id, size_t size,
					    gfp_t gfp)
{
	return klp_shadow_get_or_alloc(obj, id, size, gfp, NULL, NULL);
}

static inline void *kpb_shadow_get(void *obj, unsigned long id)
{
	return klp_shadow_get(obj, id);
}

static inline void kpb_shadow_free(void *obj, unsigned long id)
{
	klp_shadow_free(obj, id, NULL);
}

/* Every shadow variable @id, of every object: for an unpatch callback. */
static inline void kpb_shadow_free_all(unsigned long id)
{
	klp_shadow_free_all(id, NULL);
}

#endif /* KPATCHBUILD_H */
