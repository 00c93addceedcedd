"""Tests of the stages, one folder each."""
