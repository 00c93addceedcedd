"""package: proven modules -> Debian packages in a local apt repository (deb.py builds one
with dpkg-deb, tool.py is the kpatch command's, patch.py a recipe's kpatch-patch package,
repository.py the pool, its index and the versions)."""
