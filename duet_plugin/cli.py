"""The ``duet-plugin`` command: ``train`` / ``eval`` (OU's scripts with the plugin), ``doctor``, ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duet-plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("train", "src/train.py"), ("eval", "src/eval.py")):
        p = sub.add_parser(name, help=f"run OU's {what} with the plugin registered; other arguments go to Hydra")
        p.add_argument("--ou-root", help="OpenUnlearning checkout (default: $OU_ROOT, then the current directory)")
    doctor = sub.add_parser("doctor", help="check the OU + plugin setup and say how to fix what is wrong")
    doctor.add_argument("--ou-root", help="OpenUnlearning checkout (default: $OU_ROOT, then the current directory)")
    demo = sub.add_parser("demo", help="fictitious authors -> OU finetune -> DUET vs GradDiff -> OU TOFU eval table")
    demo.add_argument("--ou-root", help="OpenUnlearning checkout (default: $OU_ROOT, then the current directory)")
    demo.add_argument("--workdir", default="duet_demo", help="folder for data, models, logs (default: ./duet_demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --workdir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parser().parse_known_args(argv)
    if args.command in ("train", "eval"):
        from duet_plugin.openunlearning.launcher import OURootNotFound, run

        try:
            run(args.command, rest, ou_root=args.ou_root)
        except OURootNotFound as err:
            print(f"duet-plugin: {err}", file=sys.stderr)
            return 2
        return 0
    if rest:
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "doctor":
        from duet_plugin.openunlearning.doctor import diagnose, report

        checks = diagnose(args.ou_root)
        print(report(checks))
        return 1 if any(c.status == "fail" for c in checks) else 0
    if args.command == "demo":
        from duet_plugin.demo.pipeline import Demo, DemoStepFailed
        from duet_plugin.openunlearning.launcher import OURootNotFound

        try:
            Demo(args.workdir, ou_root=args.ou_root, overwrite=args.overwrite).run()
        except (OURootNotFound, FileExistsError, DemoStepFailed) as err:
            print(f"duet-plugin demo: {err}", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
