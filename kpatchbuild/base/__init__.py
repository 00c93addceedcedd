"""The ground floor every stage stands on: errors, the content-addressed store, running
commands (logs, progress, one-line failures), and kbuild's make invocations.
"""
