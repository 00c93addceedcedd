"""Tests of the matrix's report: table, JSON, JUnit XML and their merge."""
