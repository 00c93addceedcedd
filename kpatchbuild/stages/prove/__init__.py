"""prove: the module booted in its original kernel under qemu, checked before, while and
after it patches.
"""
