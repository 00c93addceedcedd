"""The stages, in the order data flows through them:

    fetch -> config -> original -> patches -> patched -> diff -> module -> prove

Each folder is one stage, named as its task, its pipeline method, its log and its store
kind are.
"""
