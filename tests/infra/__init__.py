"""Offline tests of infra/ and scripts/ (issue 4)."""
