"""Reproduce DUET, BiDistill, UNDO and OU's baselines on MUSE, then OU's evaluation and the robustness suite.

    python scripts/reproduce_muse.py --ou-root $OU_ROOT --dry-run       # print every command, run nothing
    python scripts/reproduce_muse.py --ou-root $OU_ROOT --list-methods  # methods, their sources, what is skipped
    python scripts/reproduce_muse.py --ou-root $OU_ROOT                 # run (a rerun skips finished steps)

The grid is built by duet_plugin.reproduce; see its docstring and `--help`.
"""

import sys

from duet_plugin.reproduce import main

if __name__ == "__main__":
    sys.exit(main("muse"))
