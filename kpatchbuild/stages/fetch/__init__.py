"""fetch: a target's kernel packages (Debian's image, config, symbol tables, Module.symvers)
and its pristine source tree; the .ko files of the modules a patch changes.
"""
