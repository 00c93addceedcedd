"""The graph: recipes, the steps of one recipe on one kernel target (pipeline), and their
doit tasks (the only module that knows doit).
"""
