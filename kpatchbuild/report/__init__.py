"""The test matrix's report: one result per cell, as a table, JUnit XML and JSON.

Stands apart (standard library only): the graph assembles the results from the pipeline's
records, and a CI job merges the reports of cells that ran on other machines.
"""
