"""How many teacher values must the precomputed store keep for BiDistill's push term? Memory against accuracy.

The push term reads the teacher's logits at the student's top indices, which change during training. A store of the
teacher's top K' values per position answers exactly where the index is among them and with the K'-th value (an
upper bound) elsewhere. This measures, on a finished demo's fine-tuned model (student = the model, teacher = the same
model with the demo's unlearning prefix), over the forget questions and their prefilled variants:

- bytes per aligned position (int32 ids + float32 values + one log-normaliser), and for Llama-3's vocabulary;
- the push loss and its gradient w.r.t. the student logits against the exact (full-vocabulary) ones;
- the share of the student's top indices found in the store.

    python scripts/bench_bidistill_store.py --demo-workdir DIR [--push-top-k 10] [--distance huber]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from duet_plugin.core.collate import TeacherStudentCollator, gather_positions
from duet_plugin.core.converters import prefilled_records
from duet_plugin.core.losses import directed_loss, select_topk
from duet_plugin.core.teacher import PrefixSpec, derive_concepts
from duet_plugin.core.unified import UnifiedRecord

LLAMA3_VOCAB = 128_256


def _rows(path: Path) -> list[dict]:
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line]


def _demo_prefix(workdir: Path) -> str | None:
    """The teacher prefix the demo used (its results file names it)."""
    results = workdir / "demo_results.md"
    lines = results.read_text().splitlines() if results.is_file() else []
    return next((line.split(": ", 1)[1] for line in lines if line.startswith("Teacher prefix: ")), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-workdir", required=True, help="a finished `duet-plugin demo` folder")
    parser.add_argument("--forget-split", default="forget05")
    parser.add_argument("--retain-split", default="retain95")
    parser.add_argument("--push-top-k", type=int, default=10)
    parser.add_argument("--distance", default="huber", choices=["huber", "mse", "kl", "bild"])
    parser.add_argument("--store", type=int, nargs="+", default=[10, 32, 64, 128, 256, 512])
    args = parser.parse_args()
    torch.manual_seed(0)

    w = Path(args.demo_workdir)
    model_dir = w / "saves" / "finetune" / "demo_full"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    forget = _rows(w / "locuslab" / "TOFU" / f"{args.forget_split}.json")
    retain = _rows(w / "locuslab" / "TOFU" / f"{args.retain_split}.json")
    prefix = _demo_prefix(w)
    if prefix is None:  # not a finished demo: name the recurring forget names as the demo does
        text = [f"{r['question']} {r['answer']}" for r in forget]
        concepts = derive_concepts(text, [f"{r['question']} {r['answer']}" for r in retain])
        prefix = PrefixSpec(name="never_heard_of", concepts=tuple(concepts), placement="user").render()
    records = [UnifiedRecord(prompt=r["question"], response=r["answer"]) for r in forget]
    records += prefilled_records(records, [2])
    collator = TeacherStudentCollator(tok, {"apply_chat_template": True, "system_prompt": None}, prefix, "user")
    batch = collator([r.to_dict() for r in records])
    with torch.no_grad():
        t = gather_positions(
            model(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits,
            batch["teacher_positions"],
            batch["position_mask"],
        )
        s = gather_positions(
            model(input_ids=batch["student_input_ids"], attention_mask=batch["student_attention_mask"]).logits,
            batch["student_positions"],
            batch["position_mask"],
        )
    vocab = t.shape[-1]

    def push(stored_k: int) -> tuple[float, torch.Tensor]:
        logits = s.clone().requires_grad_(True)
        loss = directed_loss(logits, select_topk(t, stored_k), "push", args.push_top_k, args.distance)
        loss.backward()
        return float(loss), logits.grad.flatten()

    exact_loss, exact_grad = push(vocab)
    student_top = s.topk(args.push_top_k, dim=-1).indices
    print(f"model {model_dir} (vocabulary {vocab}), {len(records)} positions (forget questions + 2-word prefills)")
    print(f"teacher prefix: {prefix}\npush: student top-{args.push_top_k}, distance {args.distance}\n")
    print("| stored K' | bytes/position | at Llama-3 vocab | student top-K found | push loss | vs exact | grad cos |")
    print("|---|---|---|---|---|---|---|")
    for k in [*[k for k in args.store if k < vocab], vocab]:
        loss, grad = push(k)
        ids = t.topk(k, dim=-1).indices
        found = (student_top.unsqueeze(-1) == ids.unsqueeze(-2)).any(-1).float().mean()
        cosine = torch.nn.functional.cosine_similarity(grad, exact_grad, dim=0)
        llama = 8 * (LLAMA3_VOCAB if k == vocab else k) + 4
        label = f"{k} (full)" if k == vocab else str(k)
        print(
            f"| {label} | {8 * k + 4:,} | {llama:,} | {found:.3f} | {loss:.4f} | "
            f"{(loss - exact_loss) / exact_loss:+.1%} | {cosine:.4f} |"
        )


if __name__ == "__main__":
    main()
