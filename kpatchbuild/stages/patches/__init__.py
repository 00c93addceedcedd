"""patches: the recipe's patches, read as people write them, checked to apply to the
original source.
"""
