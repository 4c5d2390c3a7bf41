"""Reproduce DUET, BiDistill, UNDO and OU's baselines on MUSE, then OU's evaluation and the robustness suite.

    python scripts/reproduce_muse.py --ou-root $OU_ROOT --dry-run       # print every command, run nothing
    python scripts/reproduce_muse.py --ou-root $OU_ROOT --list-methods  # methods, their sources, what is skipped
    python scripts/reproduce_muse.py --ou-root $OU_ROOT                 # run (a rerun skips finished steps)
    python scripts/reproduce_muse.py --ou-root $OU_ROOT --profile cpu --demo-workdir DEMO_DIR

With --profile cpu the grid runs on a finished `duet-plugin demo` folder: its model and schedule, and
MUSE-layout stand-ins (muse-bench/MUSE-News, -Books) written into it from the demo's fictitious authors.

The grid is built by duet_plugin.reproduce; see its docstring and `--help`.
"""

import sys

from duet_plugin.reproduce import main

if __name__ == "__main__":
    sys.exit(main("muse"))
