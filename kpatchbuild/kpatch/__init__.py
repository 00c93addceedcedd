"""``kpatch``: the user-side command that loads, replaces, unloads and installs livepatch modules.

It runs on the patched machine, not the build host, so it stays small: the standard library,
pyelftools for reading module files, and nothing of the build side (no doit, diskcache, yaml
or pipeline module). Its rooms:

- ``errors``: the exit codes, one exception class each;
- ``system``: the kernel as files and two syscalls, under an injectable root and loader;
- ``modfile``: what a ``.ko`` says about itself (modinfo, patched functions);
- ``livepatch``: load, unload, replace, signal and force, with their checks and waits;
- ``install``: ``/var/lib/kpatch/<release>/`` and the boot hooks;
- ``cli``: argparse subcommands, human and JSON output, one line per failure.
"""
