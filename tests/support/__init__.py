"""The tests' own infrastructure (chroots of other Debian releases) and its tests."""
