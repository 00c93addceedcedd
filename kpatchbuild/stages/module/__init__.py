"""module: the per-object diffs and kmod/'s templates linked into a livepatch .ko.
"""
