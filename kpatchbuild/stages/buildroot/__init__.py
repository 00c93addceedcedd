"""buildroot: the target's exact toolchain, in a debootstrapped root of its Debian release when
the host's gcc is not the kernel's.
"""
