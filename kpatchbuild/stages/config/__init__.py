"""config: the target's kernel .config, Debian's own or made from a base, fragments and the
options livepatch needs, each checked.
"""
