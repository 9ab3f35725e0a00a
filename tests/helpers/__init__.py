"""Helpers shared by the tests: tiny models and data, a local fake Hub, a clean-environment runner, multi-process
launch commands and crash injection. Test-only: nothing in the packages imports them."""
