/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kpatch-syscall.h: KPATCH_SYSCALL_DEFINE0..6, for patching a system call.
 *
 * SYSCALL_DEFINEn(name, ...) puts the syscall's body in `static inline __do_sys_name()`,
 * called from the entry stub `__x64_sys_name()`. The kernel's `inline` implies notrace, so
 * when the compiler keeps __do_sys_name() out of line it has no __fentry__ call and
 * livepatch cannot redirect it. Written with KPATCH_SYSCALL_DEFINEn instead, the body is
 * a function of another name, new to the differ, and the stub that calls it, which has
 * its __fentry__ call, is what the patch redirects. Replace the SYSCALL_DEFINEn line only:
 *
 *	-SYSCALL_DEFINE1(getpid_demo, int, flags)
 *	+KPATCH_SYSCALL_DEFINE1(getpid_demo, int, flags)
 *
 * x86_64 with syscall wrappers (Linux 4.17 and later); elsewhere it is SYSCALL_DEFINEn.
 */
#ifndef KPATCHBUILD_KPATCH_SYSCALL_H
#define KPATCHBUILD_KPATCH_SYSCALL_H

#include <linux/syscalls.h>

#include "kpatch-macros.h"

#define KPATCH_SYSCALL_DEFINE0(sname) __KPB_SYSCALL_DEFINE0(sname)
#define KPATCH_SYSCALL_DEFINE1(name, ...) KPATCH_SYSCALL_DEFINEx(1, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...) KPATCH_SYSCALL_DEFINEx(2, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...) KPATCH_SYSCALL_DEFINEx(3, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...) KPATCH_SYSCALL_DEFINEx(4, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...) KPATCH_SYSCALL_DEFINEx(5, _##name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...) KPATCH_SYSCALL_DEFINEx(6, _##name, __VA_ARGS__)

#if defined(CONFIG_X86_64) && defined(CONFIG_ARCH_HAS_SYSCALL_WRAPPER)

/*
 * The kernel's x86 layout (asm/syscall_wrapper.h) with the body renamed __kpb_do_sys*:
 * the stubs take pt_regs and call __se_sys*, which widens the arguments and calls the body.
 */
#define KPATCH_SYSCALL_DEFINEx(x, sname, ...)					\
	SYSCALL_METADATA(sname, x, __VA_ARGS__)					\
	__KPB_SYSCALL_DEFINEx(x, sname, __VA_ARGS__)

#ifdef __X64_SYS_STUBx
#define __KPB_X64_STUB(x, name, ...) __X64_SYS_STUBx(x, name, __VA_ARGS__)
#else	/* before 5.7 the stub was written out in __SYSCALL_DEFINEx */
#define __KPB_X64_STUB(x, name, ...)						\
	asmlinkage long __x64_sys##name(const struct pt_regs *regs);		\
	ALLOW_ERROR_INJECTION(__x64_sys##name, ERRNO);				\
	asmlinkage long __x64_sys##name(const struct pt_regs *regs)		\
	{									\
		return __se_sys##name(SC_X86_64_REGS_TO_ARGS(x, __VA_ARGS__));	\
	}
#endif

#define __KPB_SYSCALL_DEFINEx(x, name, ...)					\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__));		\
	static inline long __kpb_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__));\
	__KPB_X64_STUB(x, name, __VA_ARGS__)					\
	__IA32_SYS_STUBx(x, name, __VA_ARGS__)					\
	static long __se_sys##name(__MAP(x, __SC_LONG, __VA_ARGS__))		\
	{									\
		long ret = __kpb_do_sys##name(__MAP(x, __SC_CAST, __VA_ARGS__));\
		__MAP(x, __SC_TEST, __VA_ARGS__);				\
		__PROTECT(x, ret, __MAP(x, __SC_ARGS, __VA_ARGS__));		\
		return ret;							\
	}									\
	static inline long __kpb_do_sys##name(__MAP(x, __SC_DECL, __VA_ARGS__))

/* A syscall without arguments has no body function to rename: it is its own stub. */
#define __KPB_SYSCALL_DEFINE0(sname) SYSCALL_DEFINE0(sname)

#else

#define KPATCH_SYSCALL_DEFINEx(x, sname, ...) SYSCALL_DEFINEx(x, sname, __VA_ARGS__)
#define __KPB_SYSCALL_DEFINE0(sname) SYSCALL_DEFINE0(sname)

#endif

#endif /* KPATCHBUILD_KPATCH_SYSCALL_H */
