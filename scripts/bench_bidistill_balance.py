"""Why BiDistill's adversarial stream dominates its objective: the terms at the start of training, and what sets them.

At step 0 the student is the starting model, so every logged ``<stream>_<direction>`` term measures how far the
unprefixed model is from the prompt-steered teacher at the aligned positions. This script computes those terms with
the trainer's own loss (``core.bidistill.bidistill_loss``, online teacher) on QA files, per stream, for each
distance, and next to them what drives a raw-logit distance on a real vocabulary:

* the mean logit level of the teacher's top-K at the aligned position and of the student at the same indices:
  softmax ignores a shift of every logit, a raw-logit distance does not;
* the distance after centring both sides (each position's K values minus their mean): what is left is the shape;
* the norm of each term's gradient with respect to the model's weights (``--grad``): what an optimiser step sees.
  A Huber term in its linear regime has a gradient of at most 1 per logit however large its value, so a term's
  value and its pull on the weights can differ by an order of magnitude.

    python scripts/bench_bidistill_balance.py --model MODEL_DIR --forget F.json --retain R.json [--boundary B.json]

Prints one markdown table. Framework-free: no OU checkout is needed.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from duet_plugin.core.bidistill import BiDistillConfig, bidistill_loss, gradient_norms
from duet_plugin.core.collate import TeacherStudentCollator, gather_positions
from duet_plugin.core.converters import convert_qa, prefilled_records
from duet_plugin.core.teacher import PrefixSpec, concepts_from_records
from duet_plugin.core.teacher_targets import eos_ids, stream_targets


def _records(args: argparse.Namespace) -> dict[str, list]:
    """The streams' records; the adversarial ones prefill the same (truncated) forget questions."""
    streams = {"forget": convert_qa(args.forget, stream="forget"), "retain": convert_qa(args.retain, stream="retain")}
    if args.boundary:
        streams["boundary"] = convert_qa(args.boundary, stream="boundary")
    streams = {s: recs[: args.max_records] for s, recs in streams.items()}
    streams["adversarial"] = prefilled_records(streams["forget"], args.prefill_words)
    return streams


@torch.no_grad()
def levels(model, batch, targets, k: int) -> tuple[float, float, float]:
    """Mean teacher top-``k`` logit, mean student logit at those indices, and the centred Huber sum per position
    (online targets hold the whole vocabulary, sorted: the first ``k`` are the pull term's)."""
    logits = model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits
    at = gather_positions(logits, batch["student_positions"], batch["position_mask"]).float()
    s = at.gather(-1, targets.indices[:, :k])
    t = targets.values[:, :k].float()
    centred = torch.nn.functional.huber_loss(s - s.mean(-1, True), t - t.mean(-1, True), reduction="none").sum(-1)
    return t.mean().item(), s.mean().item(), centred.mean().item()


def gradient_norm(model, streams, cfg: BiDistillConfig, term: str, vocab: int, pad_id: int, eos) -> float:
    """The gradient norm over the weights of one raw ``<stream>_<direction>`` term (online teacher), as
    ``balance: grad`` measures it (``core.bidistill.gradient_norms``)."""
    stream, direction = term.rsplit("_", 1)
    weights = {s: {"pull": 0.0, "push": 0.0} for s in streams}
    weights[stream][direction] = 1.0
    only = replace(cfg, stream_weights=weights, w_pull=1.0, w_push=1.0, balance="none")
    loss, _ = bidistill_loss(model, {stream: streams[stream]}, only, vocab, pad_id, eos, teacher=model)
    return gradient_norms(model, {term: loss})[term].item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--forget", required=True)
    parser.add_argument("--retain", required=True)
    parser.add_argument("--boundary")
    parser.add_argument("--prefix", default="forget_authors")
    parser.add_argument("--placement", default="auto")
    parser.add_argument("--prefill-words", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--max-records", type=int, default=16, help="per stream; adversarial: 2 per forget record")
    parser.add_argument("--grad", action="store_true", help="also each term's gradient norm over the weights (Huber)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    records = _records(args)
    spec = PrefixSpec(name=args.prefix, concepts=tuple(concepts_from_records(records["forget"], records["retain"])))
    template = {"apply_chat_template": bool(tokenizer.chat_template)}
    collator = TeacherStudentCollator(tokenizer, template, spec.render(), args.placement, teacher_prefill=False)
    streams = {s: collator([r.to_dict() for r in recs]) for s, recs in records.items()}
    eos = eos_ids(tokenizer)
    vocab = model.get_output_embeddings().weight.shape[0]
    print(f"model {args.model.name}, prefix {args.prefix}: {spec.render()[:80]}...")
    print(
        f"records per stream: { {s: len(r) for s, r in records.items()} }; adversarial: forget answers with "
        f"{args.prefill_words} words prefilled, student aligned after the prefill, teacher at its response start\n"
    )
    rows = {}
    for distance in ("huber", "kl"):
        cfg = BiDistillConfig(distance=distance, teacher_mode="online", balance="none")
        with torch.no_grad():
            _, parts = bidistill_loss(model, streams, cfg, vocab, collator.pad_id, eos, teacher=model)
        for key, value in parts.items():
            rows.setdefault(key, {})[distance] = value
    cfg = BiDistillConfig(teacher_mode="online", balance="none")
    if args.grad:
        for key in rows:
            rows[key]["grad"] = gradient_norm(model, streams, cfg, key, vocab, collator.pad_id, eos)
    grad_head = " | Huber's gradient norm over the weights" if args.grad else ""
    print(
        "| stream | term | Huber (raw logits, the default) | Huber, logits centred | KL (top-K + tail) "
        f"| teacher top-K mean logit | student mean logit there{grad_head} |"
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if args.grad else ""))
    for stream, batch in streams.items():
        targets, batch = stream_targets(stream, batch, cfg.target_config(vocab), collator.pad_id, eos, teacher=model)
        t_level, s_level, centred = levels(model, batch, targets, cfg.top_k)
        for direction in ("pull", "push"):
            key = f"{stream}_{direction}"
            if key not in rows:
                continue
            cell = f"{centred:.3f}" if direction == "pull" else "-"
            grad = f" {rows[key]['grad']:.2f} |" if args.grad else ""
            print(
                f"| {stream} | {direction} | {rows[key]['huber']:.3f} | {cell} | {rows[key]['kl']:.3f} "
                f"| {t_level:.2f} | {s_level:.2f} |{grad}"
            )


if __name__ == "__main__":
    main()
