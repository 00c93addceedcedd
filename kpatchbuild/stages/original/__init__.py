"""original: the original stage, a Debian source tree prepared for its kernel (no kernel
build) or a kernel built in full.
"""
