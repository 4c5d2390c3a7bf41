"""Query builders: raw text (MUSE, WMDP) -> unified query records.

* :func:`template_queries`: deterministic and seeded, over sentences. ``continuation`` shows a sentence's first
  words and keeps the rest as the response; ``cloze`` blanks an answer span; ``question`` turns the sentence into a
  wh-question about an answer span (``Marie Curie discovered radium in which year?``). The span (a number, a name,
  else a content word) is the response.
* :class:`LLMQueryBuilder`: asks a local Hugging Face causal LM to write questions about each passage (batched,
  left-padded, greedy), writes records as it goes and resumes an interrupted run.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from duet_plugin.core.unified import UnifiedRecord, record_line, split_sentences

TEMPLATE_MODES = ("question", "cloze", "continuation")
CONTINUATION_PROMPT = "Continue the following text: {head}"
CLOZE_PROMPT = "Fill in the blank: {masked}"
BLANK = "____"

_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)
_NUMBER = re.compile(r"\d(?:[\d,.]*\d)?")
_YEAR = re.compile(r"1\d{3}|20\d{2}")
_LEADING_FUNCTION_WORDS = frozenset(
    "a an the in on at of for to from by with this that these those it its he she they we his her their our "
    "after before during when while as if but and or so yet".split()
)
_STOPWORDS = frozenset(
    "about above after again against along among around because before being below between could during "
    "every other their there these those though through toward towards under until where which while would "
    "should still since within without whose whom".split()
)


def _parts(token: str) -> tuple[str, str, str]:
    lead, core, trail = _TOKEN.match(token).groups()
    return lead, core, trail


def answer_spans(sentence: str) -> list[tuple[int, int, str]]:
    """Candidate answer spans ``(start, end, kind)`` over the sentence's whitespace tokens.

    Kinds: ``year``/``number`` (a numeral), ``name`` (a run of capitalised words, not just the sentence's first
    word), or, only when there is neither, ``word`` (a lowercase content word of five letters or more, not an
    ``-ly`` adverb).
    """
    tokens = sentence.split()
    parts = [_parts(t) for t in tokens]
    spans: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        core = parts[i][1]
        if _NUMBER.fullmatch(core):
            spans.append((i, i + 1, "year" if _YEAR.fullmatch(core) else "number"))
            i += 1
            continue
        if core[:1].isupper() and core[:1].isalpha() and core != "I":
            j = i + 1
            while j < len(tokens) and not parts[j - 1][2] and parts[j][1][:1].isupper() and not parts[j][0]:
                j += 1
            # at the sentence start: a lone word, or a run opened by "The"/"In"/..., is not taken for a name
            if i > 0 or (j > 1 and core.lower() not in _LEADING_FUNCTION_WORDS):
                spans.append((i, j, "name"))
            i = j
            continue
        i += 1
    if spans:
        return spans
    return [
        (i, i + 1, "word")
        for i, (_, core, _) in enumerate(parts)
        if core.isalpha() and core.islower() and len(core) >= 5 and not core.endswith("ly") and core not in _STOPWORDS
    ]


def _span_text(tokens: list[str], start: int, end: int) -> str:
    """The span's words without the punctuation before its first and after its last word."""
    words = list(tokens[start:end])
    words[0] = words[0][len(_parts(words[0])[0]) :]
    trail = _parts(words[-1])[2]
    if trail:
        words[-1] = words[-1][: -len(trail)]
    return " ".join(words)


def cloze_query(sentence: str, rng: random.Random) -> tuple[str, str] | None:
    """``(prompt, answer)``: the sentence with a seeded answer span blanked out; ``None`` without a span."""
    spans = answer_spans(sentence)
    if not spans:
        return None
    start, end, _ = rng.choice(spans)
    tokens = sentence.split()
    lead, trail = _parts(tokens[start])[0], _parts(tokens[end - 1])[2]
    masked = [*tokens[:start], f"{lead}{BLANK}{trail}", *tokens[end:]]
    return CLOZE_PROMPT.format(masked=" ".join(masked)), _span_text(tokens, start, end)


def question_query(sentence: str, rng: random.Random) -> tuple[str, str] | None:
    """``(question, answer)``: the sentence as a wh-question about a seeded answer span (``which year`` for a year,
    ``how many`` for another number, ``who`` for a name opening the sentence, else ``what``); ``None`` without
    a span."""
    spans = answer_spans(sentence)
    if not spans:
        return None
    start, end, kind = rng.choice(spans)
    tokens = sentence.split()
    wh = {"year": "which year", "number": "how many"}.get(kind, "who" if kind == "name" and start == 0 else "what")
    lead, trail = _parts(tokens[start])[0], _parts(tokens[end - 1])[2]
    if lead:  # the span was quoted or bracketed: the wh-word is not
        trail = trail.lstrip("\"'”’)]»")
    words = [*tokens[:start], wh + trail, *tokens[end:]]
    if start == 0:
        words[0] = words[0][:1].upper() + words[0][1:]
    words[-1] = words[-1].rstrip(".!?;:,") + "?"
    return " ".join(words), _span_text(tokens, start, end)


def template_queries(
    texts: Iterable[str],
    mode: str = "continuation",
    stream: str = "forget",
    source: str = "text",
    head_words: int = 8,
    max_records: int | None = None,
    seed: int = 0,
) -> list[UnifiedRecord]:
    """Raw text -> query records, one per sentence of at least ``head_words + 2`` words.

    ``continuation``: prompt ``Continue the following text: <first head_words words>``, response the rest of
    the sentence. ``cloze``: prompt ``Fill in the blank: <sentence with ____>``, response the blanked span.
    ``question``: a wh-question about an answer span, response the span. Sentences without a span are skipped
    (``cloze``/``question``). ``max_records`` samples that many sentences with ``seed``, which also picks each
    sentence's span (independently of the other sentences), so the output is a function of its arguments.
    """
    if mode not in TEMPLATE_MODES:
        raise ValueError(f"Unknown text query template {mode!r}; use one of {TEMPLATE_MODES}.")
    if head_words < 1:
        raise ValueError("head_words must be at least 1.")
    sentences = [s for text in texts for s in split_sentences(text, min_words=head_words + 2)]
    if max_records is not None and len(sentences) > max_records:
        sentences = random.Random(seed).sample(sentences, max_records)
    records = []
    for sentence in sentences:
        if mode == "continuation":
            words = sentence.split()
            query: tuple[str, str] | None = (
                CONTINUATION_PROMPT.format(head=" ".join(words[:head_words])),
                " ".join(words[head_words:]),
            )
        else:
            rng = random.Random(f"{seed}:{sentence}")
            query = (cloze_query if mode == "cloze" else question_query)(sentence, rng)
        if query is not None:
            records.append(UnifiedRecord(prompt=query[0], response=query[1], stream=stream, source=source))
    return records


def records_from_text(
    texts: Iterable[str],
    stream: str = "forget",
    source: str = "text",
    template: str = "continuation",
    head_words: int = 8,
    max_records: int | None = None,
    seed: int = 0,
) -> list[UnifiedRecord]:
    """Raw corpus text (MUSE, WMDP) -> query records by the seeded template builder.

    ``template`` is a :data:`TEMPLATE_MODES` mode (``continuation``: the first
    ``head_words`` words of a sentence, the rest is the response; ``cloze``; ``question``). ``max_records``
    samples that many sentences (seeded). See :func:`template_queries`.
    """
    return template_queries(
        texts,
        mode=template,
        stream=stream,
        source=source,
        head_words=head_words,
        max_records=max_records,
        seed=seed,
    )


def split_passages(texts: Iterable[str], max_words: int = 200) -> list[str]:
    """Texts -> passages of whole sentences, at most ``max_words`` words each (a longer sentence is its own
    passage)."""
    if max_words < 1:
        raise ValueError("max_words must be at least 1.")
    passages = []
    for text in texts:
        current: list[str] = []
        n = 0
        for sentence in split_sentences(text, min_words=1):
            k = len(sentence.split())
            if current and n + k > max_words:
                passages.append(" ".join(current))
                current, n = [], 0
            current.append(sentence)
            n += k
        if current:
            passages.append(" ".join(current))
    return passages


def passage_key(passage: str) -> str:
    """The resume key of a passage: SHA-256 of its whitespace-normalised text."""
    return hashlib.sha256(" ".join(passage.split()).encode("utf-8")).hexdigest()


_NUMBERED = re.compile(r"^\s*(?:\*\*)?(?:Q(?:uestion)?\s*)?\(?\d{1,2}\s*[.):]\s*", re.I)
_INLINE_NUMBERED = re.compile(r"(?<=\?)\s+(?=\(?\d{1,2}[.)]\s)")
_BULLET = re.compile(r"^\s*(?:[-*•]\s+|Q(?:uestion)?\s*:\s*)", re.I)


def parse_questions(text: str, n: int | None = None) -> list[str]:
    """Questions from a model's reply: the numbered items (``1.``, ``2)``, ``Q3:``) when there are any, else the
    non-empty lines (split at ``\\n`` only); bullets, ``Question:`` labels and wrapping quotes/asterisks are
    stripped; items ending in ``:`` (headers such as ``Here are 3 questions:``), items without a letter or digit,
    and duplicates are dropped; at most ``n``."""
    lines = [ln for ln in re.split(r"\r?\n", text) if ln.strip()]
    if any(_NUMBERED.match(ln) for ln in lines):
        items = [part for ln in lines if _NUMBERED.match(ln) for part in _INLINE_NUMBERED.split(ln)]
        items = [_NUMBERED.sub("", item, count=1) for item in items]
    else:
        items = [_BULLET.sub("", ln, count=1) for ln in lines]
    questions: list[str] = []
    for item in items:
        item = " ".join(item.split()).strip("\"'*` ")
        if any(c.isalnum() for c in item) and not item.endswith(":") and item not in questions:
            questions.append(item)
    return questions if n is None else questions[:n]


DEFAULT_QUESTION_PROMPT = (
    "Read the passage below and write {n} different questions that the passage answers. "
    "Write one question per line, numbered 1 to {n}, and nothing else.\n\nPassage:\n{passage}"
)


class LLMQueryBuilder:
    """Questions about passages, written by a local Hugging Face causal LM.

    ``model`` is a local model folder (loaded with its tokenizer) or a loaded model with ``tokenizer``. Each
    passage is put into ``prompt_template`` (fields ``{passage}`` and ``{n}``; rendered with the tokenizer's chat
    template when it has one, unless ``chat_template=False``), generated from greedily (deterministic) in
    left-padded batches, and the reply parsed by :func:`parse_questions` into at most ``n_questions`` questions.
    Records have no response (the model writes questions only).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        n_questions: int = 3,
        prompt_template: str = DEFAULT_QUESTION_PROMPT,
        batch_size: int = 8,
        max_new_tokens: int = 128,
        chat_template: bool | None = None,
        device: str | None = None,
    ) -> None:
        if "{passage}" not in prompt_template:
            raise ValueError("prompt_template needs a '{passage}' field.")
        if n_questions < 1 or batch_size < 1 or max_new_tokens < 1:
            raise ValueError("n_questions, batch_size and max_new_tokens must be at least 1.")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, Path)):
            if not Path(model).is_dir():
                raise FileNotFoundError(f"No local model folder at {model}; the LLM builder loads local models only.")
            self.model_name = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model, torch_dtype="auto")
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        else:
            if tokenizer is None:
                raise ValueError("Pass the tokenizer with a loaded model.")
            self.model_name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
            if device is not None:
                model.to(device)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.n_questions = n_questions
        self.prompt_template = prompt_template
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.chat_template = bool(tokenizer.chat_template) if chat_template is None else chat_template

    def render(self, passage: str) -> str:
        """The generation prompt for one passage."""
        prompt = self.prompt_template.format(passage=passage, n=self.n_questions)
        if not self.chat_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def generate(self, passages: Sequence[str]) -> list[str]:
        """The model's greedy replies for one batch of passages (left-padded)."""
        import torch

        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(
                [self.render(p) for p in passages],
                return_tensors="pt",
                padding=True,
                add_special_tokens=not self.chat_template,
            )
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            out = self.model.generate(
                **enc, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id
            )
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def questions(self, passages: Sequence[str]) -> list[list[str]]:
        """Parsed questions for each passage, generated ``batch_size`` passages at a time."""
        result: list[list[str]] = []
        for i in range(0, len(passages), self.batch_size):
            replies = self.generate(passages[i : i + self.batch_size])
            result += [parse_questions(reply, self.n_questions) for reply in replies]
        return result

    def settings(self, stream: str, source: str) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        return {
            "model": self.model_name,
            "prompt_template": self.prompt_template,
            "n_questions": self.n_questions,
            "max_new_tokens": self.max_new_tokens,
            "chat_template": self.chat_template,
            "stream": stream,
            "source": source,
        }

    def build(
        self,
        passages: Iterable[str],
        out_path: str | Path,
        stream: str = "forget",
        source: str = "llm_questions",
        max_records: int | None = None,
        overwrite: bool = False,
    ) -> list[UnifiedRecord]:
        """Write question records for ``passages`` to ``out_path`` (JSONL) as they are made; return all of them.

        Progress (one line per finished passage, keyed by :func:`passage_key`) goes to ``<out_path>.progress``.
        Run again with the same output and it resumes: finished passages are skipped and records of a passage
        cut short are dropped (passages are keyed by content, so new passages in a changed input are added).
        ``overwrite`` starts over. An existing output without a progress file, or a
        progress file from other settings (model, prompt, ``n_questions``, ...), is an error.
        """
        out = Path(out_path)
        progress = out.with_name(out.name + ".progress")
        settings = self.settings(stream, source)
        if overwrite:
            out.unlink(missing_ok=True)
            progress.unlink(missing_ok=True)
        if out.exists() and not progress.exists():
            raise FileExistsError(f"{out} exists and is not a resumable LLM-builder output; use --overwrite.")
        done = _resume(out, progress, settings)
        count = sum(done.values())
        todo = [p for p in dict.fromkeys(" ".join(p.split()) for p in passages) if p and passage_key(p) not in done]
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as records_file, progress.open("a", encoding="utf-8") as progress_file:
            if not done and progress_file.tell() == 0:
                progress_file.write(json.dumps({"settings": settings}) + "\n")
            for i in range(0, len(todo), self.batch_size):
                if max_records is not None and count >= max_records:
                    break
                batch = todo[i : i + self.batch_size]
                for passage, questions in zip(batch, self.questions(batch), strict=True):
                    if max_records is not None:
                        questions = questions[: max(0, max_records - count)]
                    for q in questions:
                        records_file.write(record_line(UnifiedRecord(prompt=q, stream=stream, source=source)))
                    records_file.flush()
                    progress_file.write(json.dumps({"passage": passage_key(passage), "records": len(questions)}) + "\n")
                    progress_file.flush()
                    count += len(questions)
                    if max_records is not None and count >= max_records:
                        break
        lines = out.read_text(encoding="utf-8").splitlines()
        return [UnifiedRecord.from_dict(json.loads(line)) for line in lines]


def _resume(out: Path, progress: Path, settings: dict[str, Any]) -> dict[str, int]:
    """Finished passages (key -> records written) from the progress file; trims records past the last one."""
    if not progress.exists():
        return {}
    lines = progress.read_text(encoding="utf-8").splitlines(keepends=True)
    try:
        header = json.loads(lines[0])["settings"] if lines else None
    except (json.JSONDecodeError, KeyError, TypeError):
        header = None
    if header is None:
        raise ValueError(f"{progress}:1: not an LLM-builder progress file; remove it or use --overwrite.")
    changed = sorted(k for k in settings if header.get(k) != settings[k])
    if changed:
        raise ValueError(
            f"{progress}: made with other settings ({', '.join(changed)} differ); use --overwrite or another output."
        )
    done: dict[str, int] = {}
    good = lines[:1]
    for n, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
            done[entry["passage"]] = int(entry["records"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if n == len(lines):  # the last line was cut short by an interrupted run
                break
            raise ValueError(f"{progress}:{n}: bad progress line; use --overwrite to start over.") from None
        good.append(line)
    committed = sum(done.values())
    kept = out.read_text(encoding="utf-8").splitlines(keepends=True) if out.exists() else []
    if len(kept) < committed:
        raise ValueError(f"{out} has {len(kept)} records but {progress} counts {committed}; use --overwrite.")
    if len(kept) > committed:
        out.write_text("".join(kept[:committed]), encoding="utf-8")
    if len(good) < len(lines):
        progress.write_text("".join(good), encoding="utf-8")
    return done
