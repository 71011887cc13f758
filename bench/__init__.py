"""tokend's benchmarks: what the daemon costs, next to a bare baseline measured in the same run.

``python -m bench`` (see ``bench/__main__.py``); the README's Performance section
holds the table of the last full run.
"""
