"""patched: the objects the patches change, compiled before and after in a workspace of the
original stage (the header index finds a header's includers in a Debian tree).
"""
