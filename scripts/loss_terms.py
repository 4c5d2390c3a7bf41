"""The loss terms a plugin trainer logged, per logged step, from the logs of OU's train.py.

The plugin's trainers add their terms to every Hugging Face log line as ``<method>/<term>`` (BiDistill: each
stream's pull and push, unweighted, and ``scale_<term>`` when balanced). OU's train.py prints those lines; the
demo keeps them in ``logs/*.log`` and the reproduction grid in ``<run>/reproduce_train.log``:

    python scripts/loss_terms.py RUN/reproduce_train.log [-o terms.md] [--plot terms.png]

Prints a markdown table (one row per logged step: the step, the total loss, the gradient norm and every term), then
each term's share of the loss (its weight x term / scale over the sum of those), and optionally draws the terms
against the step on a log scale. The weights are read from the run's ``.hydra/config.yaml`` next to the log
(BiDistill's ``w_pull``, ``w_push`` and ``stream_weights``); without one every logged term counts with weight 1.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

_LINE = re.compile(r"\{'loss': .*?\}")


def read_terms(log: Path) -> list[dict[str, float]]:
    """Every training log line of ``log`` (a dict printed by the Hugging Face Trainer), in order, with its step."""
    rows, step = [], 0
    for match in _LINE.finditer(log.read_text(errors="replace")):
        try:
            row = ast.literal_eval(match.group(0))
        except (SyntaxError, ValueError):
            continue  # a line cut by a progress bar
        step += 1
        rows.append({"step": float(step), **{k: float(v) for k, v in row.items() if isinstance(v, int | float)}})
    return rows


def term_keys(rows: list[dict[str, float]]) -> list[str]:
    """The method's terms (keys with a ``/``), scales after the terms they divide."""
    keys = list(dict.fromkeys(k for r in rows for k in r if "/" in k))
    return sorted(keys, key=lambda k: ("/scale_" in k, keys.index(k)))


def markdown(rows: list[dict[str, float]], logging_steps: int = 1) -> str:
    keys = term_keys(rows)
    head = ["step", "loss", "grad_norm", *(k.split("/", 1)[1] for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [f"{int(r['step']) * logging_steps}"]
        cells += [f"{r[k]:.4g}" if k in r else "" for k in ("loss", "grad_norm", *keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_weights(folder: Path) -> dict[str, float] | None:
    """``{<stream>_<direction>: weight}`` from the BiDistill run's ``.hydra/config.yaml`` in ``folder`` (None
    when there is none)."""
    config = folder / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    from duet_plugin.core.bidistill import DIRECTIONS, parse_stream_weights

    args = (yaml.safe_load(config.read_text()).get("trainer") or {}).get("method_args") or {}
    scale = {"pull": float(args.get("w_pull", 1.0)), "push": float(args.get("w_push", 1.0))}
    streams = parse_stream_weights(args.get("stream_weights"))
    return {f"{s}_{d}": scale[d] * w[d] for s, w in streams.items() for d in DIRECTIONS}


def shares(rows: list[dict[str, float]], weights: dict[str, float] | None = None) -> list[dict[str, float]]:
    """Per logged step, each term's share of the loss: weight x term / scale over the sum of those (a term with
    no weight in ``weights`` counts with weight 1)."""
    terms = [k for k in term_keys(rows) if "/scale_" not in k]
    out = []
    for r in rows:
        parts = {}
        for key in (k for k in terms if k in r):
            prefix, name = key.split("/", 1)
            scale = r.get(f"{prefix}/scale_{name}", 1.0)
            parts[name] = (weights or {}).get(name, 1.0) * r[key] / scale
        total = sum(parts.values())
        out.append({"step": r["step"], **{k: v / total if total else 0.0 for k, v in parts.items()}})
    return out


def shares_markdown(rows: list[dict[str, float]], logging_steps: int = 1) -> str:
    names = list(dict.fromkeys(k for r in rows for k in r if k != "step"))
    lines = ["| step | " + " | ".join(f"{n} share" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        cells = [f"{int(r['step']) * logging_steps}", *(f"{100 * r[n]:.0f}%" if n in r else "" for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, float]], path: Path, title: str, logging_steps: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in (k for k in term_keys(rows) if "/scale_" not in k):
        points = [(r["step"] * logging_steps, r[key]) for r in rows if key in r and r[key] > 0]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key.split("/", 1)[1])
    ax.set(yscale="log", xlabel="step", ylabel="term (unweighted)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", type=Path, help="a train.py log")
    p.add_argument("--logging-steps", type=int, default=1, help="trainer.args.logging_steps of the run (default 1)")
    p.add_argument("-o", "--output", type=Path, help="also write the table here")
    p.add_argument("--plot", type=Path, help="draw the terms here (PNG)")
    args = p.parse_args(argv)
    rows = read_terms(args.log)
    if not rows or not term_keys(rows):
        print(f"{args.log}: no log line with a plugin trainer's terms (<method>/<term>).", file=sys.stderr)
        return 1
    weights = run_weights(args.log.parent)
    table = markdown(rows, args.logging_steps)
    source = "the run's .hydra/config.yaml" if weights else "none found: 1 for every term"
    table += f"\n\nEach term's share of the loss (weight x term / scale; weights from {source}):\n\n" + shares_markdown(
        shares(rows, weights), args.logging_steps
    )
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    if args.plot:
        plot(rows, args.plot, args.log.parent.name, args.logging_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
