"""diff: the differ applied to each changed object pair of a target, cached by content.
"""
