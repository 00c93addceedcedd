"""Tests of recipes, the pipeline and its tasks, and the example recipes end to end."""
