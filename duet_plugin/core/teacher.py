"""The prompt-steered DUET teacher: a named prefix library and the renderer of teacher/student prompts.

The teacher is the starting model with an unlearning *prefix* in front of the query; the student is the same
model seeing the bare query. Prompts are rendered exactly as OpenUnlearning renders them for generation
(``data/utils.py:preprocess_chat_instance``), in both of OU's template styles:

* ``apply_chat_template: true``: the tokenizer's chat template. The prefix goes into the system message (after
  the model config's own ``system_prompt``), or in front of the user message when the template has no system role.
* ``apply_chat_template: false``: OU's manual tag strings (``user_start_tag`` ...). The prefix is text before
  the user turn, after ``system_prompt_with_special_tokens``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from duet_plugin.core.options import OptionError
from duet_plugin.core.query_builders import BLANK, CLOZE_PROMPT, CONTINUATION_PROMPT

PREFIX_LIBRARY_FILE = Path(__file__).with_name("prefixes.yaml")
PLACEMENTS = ("auto", "system", "user")
_PLACEHOLDER = re.compile(r"\{(\w*)\}")
_SENTINEL = "DUET_SYSTEM_ROLE_PROBE"


@cache
def prefix_library() -> dict[str, str]:
    """The named prefixes shipped with the plugin (``name -> template with an optional {concepts} slot``)."""
    with PREFIX_LIBRARY_FILE.open() as f:
        library = yaml.safe_load(f)
    return {name: " ".join(str(text).split()) for name, text in library.items()}


def join_concepts(concepts: Sequence[str]) -> str:
    """``["A"] -> "A"``, ``["A", "B"] -> "A and B"``, ``["A", "B", "C"] -> "A, B and C"``."""
    items = [c.strip() for c in concepts if c and c.strip()]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class PrefixSpec:
    """What the teacher is told: a library name or literal text, plus the concepts to forget.

    The ``prefix`` option of DUET and BiDistill (``configs/trainer/DUET.yaml``).
    """

    name: str | None = "forget_concepts"
    text: str | None = None
    concepts: tuple[str, ...] = ()
    placement: str = "auto"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str | None) -> PrefixSpec:
        """Build from a config mapping (``name``/``text``/``concepts``/``placement``) or a bare library name."""
        if cfg is None:
            return cls()
        if isinstance(cfg, PrefixSpec):
            return cfg
        if isinstance(cfg, str):
            return cls(name=cfg)
        known = {"name", "text", "concepts", "placement"}
        unknown = set(cfg) - known
        if unknown:
            raise OptionError("prefix", f"has unknown key(s) {sorted(unknown)}; valid keys are {sorted(known)}.")
        concepts = cfg.get("concepts") or ()
        if isinstance(concepts, str):
            concepts = (concepts,)
        spec = cls(
            name=cfg.get("name"),
            text=cfg.get("text"),
            concepts=tuple(str(c) for c in concepts),
            placement=cfg.get("placement") or "auto",
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        """Fail fast on a bad spec (unknown name, no text, bad placement, stray placeholders)."""
        if self.placement not in PLACEMENTS:
            raise OptionError("prefix.placement", f"must be one of {PLACEMENTS}, got {self.placement!r}.")
        if self.text is None and self.name is None:
            raise OptionError(
                "prefix.name",
                f"and prefix.text are both empty, so the teacher has no prefix: set prefix.name to one of "
                f"{sorted(prefix_library())} or prefix.text to your own instruction.",
            )
        if self.text is None and self.name not in prefix_library():
            raise OptionError(
                "prefix.name",
                f"={self.name!r} is not a known prefix. Known prefixes: {sorted(prefix_library())}. Pick one, "
                "or give your own instruction in prefix.text.",
            )
        stray = {p for p in _PLACEHOLDER.findall(self.template) if p != "concepts"}
        if stray:
            raise OptionError(
                "prefix.text",
                f"has placeholder(s) {sorted('{' + s + '}' for s in stray)}; only {{concepts}} is filled.",
            )

    @property
    def template(self) -> str:
        """The raw template text (literal text wins over the library name)."""
        return self.text if self.text is not None else prefix_library()[self.name or ""]

    @property
    def needs_concepts(self) -> bool:
        return "{concepts}" in self.template

    def with_concepts(self, concepts: Iterable[str]) -> PrefixSpec:
        return PrefixSpec(self.name, self.text, tuple(concepts), self.placement)

    def render(self) -> str:
        """The final prefix text with ``{concepts}`` filled; raises if it needs concepts and has none."""
        self.validate()
        if not self.needs_concepts:
            return self.template
        if not self.concepts:
            raise OptionError(
                "prefix.concepts",
                f"is empty: the teacher prefix {self.name or 'text'!r} has a {{concepts}} slot, and no concepts could "
                "be derived from the forget data. Set prefix.concepts=[...] (e.g. the names of the forget authors).",
            )
        return self.template.replace("{concepts}", join_concepts(self.concepts))


@dataclass(frozen=True)
class TemplateArgs:
    """OU's ``model.template_args`` (see ``configs/model/*.yaml``)."""

    apply_chat_template: bool = True
    system_prompt: str | None = None
    system_prompt_with_special_tokens: str | None = None
    user_start_tag: str | None = None
    user_end_tag: str | None = None
    asst_start_tag: str | None = None
    asst_end_tag: str | None = None
    date_string: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | TemplateArgs | None) -> TemplateArgs:
        if isinstance(cfg, TemplateArgs):
            return cfg
        cfg = dict(cfg or {})
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        known = {k: cfg.pop(k) for k in list(cfg) if k in names}
        return cls(**known, extra=cfg)


class PromptRenderer:
    """Renders and tokenizes the student prompt (query only) and the teacher prompt (prefix + query).

    The returned ids end with the generation prompt, so the last id is the position whose logits predict the
    first response token. The student ids equal OU's ``preprocess_chat_instance(..., predict_with_generate=True)``
    prompt ids.
    """

    def __init__(
        self, tokenizer: Any, template_args: Mapping[str, Any] | TemplateArgs | None, placement: str = "auto"
    ) -> None:
        self.tokenizer = tokenizer
        self.template = TemplateArgs.from_config(template_args)
        if placement not in PLACEMENTS:
            raise ValueError(f"Unknown prefix placement {placement!r}; use one of {PLACEMENTS}.")
        t = self.template
        if t.apply_chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    "model.template_args.apply_chat_template is true but the tokenizer has no chat_template. "
                    "Use a tokenizer that ships one, or set model.template_args.apply_chat_template=false and give "
                    "the manual tags (user_start_tag, user_end_tag, asst_start_tag) as OU's Llama-2 config does."
                )
        else:
            missing = [k for k in ("user_start_tag", "user_end_tag", "asst_start_tag") if getattr(t, k) is None]
            if missing:
                raise ValueError(
                    f"model.template_args.apply_chat_template is false but {missing} are not set: a tokenizer "
                    "without a chat template needs OU's manual tag strings (see configs/model/Llama-2-7b-hf.yaml)."
                )
        if placement == "auto":
            placement = "system" if (not t.apply_chat_template or self._supports_system_role()) else "user"
        self.placement = placement

    def _date_kwargs(self) -> dict[str, str]:
        return {"date_string": self.template.date_string} if self.template.date_string is not None else {}

    def _supports_system_role(self) -> bool:
        chat = [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "hi"}]
        try:
            text = self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=True, **self._date_kwargs()
            )
        except Exception:  # jinja2 TemplateError ("System role not supported") and friends
            return False
        return _SENTINEL in text

    def _system_text(self, prefix: str | None) -> str | None:
        base = self.template.system_prompt
        if prefix is None or self.placement == "user":
            return base
        return f"{base}\n\n{prefix}" if base else prefix

    def prompt_text(self, query: str, prefix: str | None = None) -> str:
        """The prompt as a string (for logs, for OU's eval ``system_prompt`` override, and for tests)."""
        t = self.template
        user = f"{prefix}\n\n{query}" if prefix is not None and self.placement == "user" else query
        if t.apply_chat_template:
            chat = []
            system = self._system_text(prefix)
            if system:
                chat.append({"role": "system", "content": system})
            chat.append({"role": "user", "content": user})
            return self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=True, **self._date_kwargs()
            )
        head = t.system_prompt_with_special_tokens or ""
        if prefix is not None and self.placement == "system":
            head += f"{prefix}\n\n"
        return head + t.user_start_tag + user + t.user_end_tag + t.asst_start_tag

    def prompt_ids(self, query: str, prefix: str | None = None) -> list[int]:
        """Token ids of the prompt, ending with the generation prompt (as OU tokenizes it)."""
        t = self.template
        if t.apply_chat_template:
            user = f"{prefix}\n\n{query}" if prefix is not None and self.placement == "user" else query
            chat = []
            system = self._system_text(prefix)
            if system:
                chat.append({"role": "system", "content": system})
            chat.append({"role": "user", "content": user})
            return list(
                self.tokenizer.apply_chat_template(
                    chat, tokenize=True, add_generation_prompt=True, **self._date_kwargs()
                )
            )
        return list(self.tokenizer(self.prompt_text(query, prefix), add_special_tokens=True)["input_ids"])

    def teacher_system_prompt(self, prefix: str) -> dict[str, str]:
        """OU ``model.template_args`` overrides that make OU's own eval.py query the prompt-steered teacher."""
        if self.template.apply_chat_template:
            if self.placement == "user":
                raise ValueError("This chat template has no system role; the teacher cannot be set by system_prompt.")
            return {"system_prompt": self._system_text(prefix) or ""}
        return {
            "system_prompt_with_special_tokens": (self.template.system_prompt_with_special_tokens or "")
            + f"{prefix}\n\n"
        }


_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”|«[^»]*»")  # quoted titles: never names, and they break a run
_TOKEN = re.compile(r"[^\W\d_][\w'’\-]*|\S")  # words (starting with a letter), or any other single character
_POSSESSIVE = ("'s", "’s", "'", "’")
_PARTICLES = frozenset("van von der den de da del della di du la le al el bin ibn ben y".split())
#: Words that open a run without being part of a name: question words, honorifics and ranks ("Inspector Varga" is
#: a character, "Dr Ana Lopez" is "Ana Lopez"), and the imperatives of news footers ("Follow BBC Devon on X").
_LEADING_WORDS = frozenset(
    "What Who Whom Whose Where When Why How Which Is Are Was Were Did Does Do Can Could Would Will Has Have Had "
    "In On At Of For From By With About The A An And Or But If Please Tell Describe Name List Give Explain "
    "Question Answer Yes No Mr Mrs Ms Miss Dr Doctor Professor Prof Sir Dame Lord Lady Inspector Detective "
    "Sergeant Captain Saint St King Queen Prince Princess President Follow Listen Watch Read Sign Send Contact "
    "Subscribe Share Download".split()
)


#: Nationality and region adjectives: a run that ends in one ("South African", "African American") is a
#: nationality, not a name.
_DEMONYMS = frozenset(
    """Afghan Albanian Algerian American Andorran Angolan Argentine Argentinian Armenian Asian Australian Austrian
    Azerbaijani Bangladeshi Belarusian Belgian Bolivian Bosnian Brazilian British Bulgarian Burmese Cambodian
    Cameroonian Canadian Catalan Chilean Chinese Colombian Congolese Croatian Cuban Cypriot Czech Danish Dominican
    Dutch Ecuadorian Egyptian English Eritrean Estonian Ethiopian European Fijian Filipino Finnish French Georgian
    German Ghanaian Greek Guatemalan Haitian Honduran Hungarian Icelandic Indian Indonesian Iranian Iraqi Irish
    Israeli Italian Ivorian Jamaican Japanese Jordanian Kazakh Kenyan Korean Kosovar Kurdish Kuwaiti Kyrgyz Lao
    Latvian Lebanese Liberian Libyan Lithuanian Malagasy Malaysian Malian Maltese Mexican Moldovan Mongolian
    Montenegrin Moroccan Mozambican Namibian Nepalese Nepali Nicaraguan Nigerian Norwegian Pakistani Palestinian
    Panamanian Paraguayan Persian Peruvian Polish Portuguese Qatari Romanian Russian Rwandan Saudi Scottish
    Senegalese Serbian Singaporean Slovak Slovenian Somali Spanish Sri Lankan Sudanese Swedish Swiss Syrian
    Taiwanese Tajik Tanzanian Thai Tibetan Tunisian Turkish Turkmen Ugandan Ukrainian Uruguayan Uzbek Venezuelan
    Vietnamese Welsh Yemeni Zambian Zimbabwean African Arab Arabic Caribbean Latin Latino Nordic Scandinavian
    Balkan Baltic Celtic Slavic Hispanic Indigenous Native Aboriginal Maori Pacific""".split()
)


#: Last words of awards, institutions and works ("Marrow Lantern Award", "Glasswright Cycle"): not a name.
_NOT_NAMES = frozenset(
    """Award Awards Prize Prizes Medal Trophy Fellowship Grant Foundation University College School Institute
    Academy Society Association Council Press Review Journal Magazine Festival Library Museum Gallery Series
    Cycle Trilogy Saga Chronicles Quartet Company Publishers Publishing Books Times Post News""".split()
)


#: Offices: a run that ends in one ("Prime Minister", "Home Secretary") is no name, and a name after one is the name
#: alone ("US President Joe Biden" -> "Joe Biden", "Health Secretary Victoria Atkins" -> "Victoria Atkins").
_TITLES = frozenset(
    "President Minister Secretary Chancellor Senator Governor Mayor Speaker Councillor Commissioner Ambassador "
    "Judge Congressman Congresswoman".split()
)

#: Days, months (not May, a surname) and holidays: a run with one ("Christmas Eve", "Tuesday October") is a date.
_CALENDAR = frozenset(
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April June July August "
    "September October November December Christmas Easter Eve Halloween Hanukkah Diwali Ramadan Eid Boxing "
    "Bonfire Valentine Year".split()
)


_SENTENCE_OPENERS = frozenset(".!?:;|\"“(«‘'")


def _runs(text: str, common: frozenset[str] = frozenset()) -> tuple[list[tuple[str, ...]], set[str], set[str]]:
    """:func:`name_runs` as word tuples, plus the capitalised words that stand alone once honorifics and
    possessives are gone ("Mr Biden's" -> "Biden"), plus every capitalised word."""
    runs: list[tuple[str, ...]] = []
    singles: set[str] = set()
    words: set[str] = set()
    run: list[str] = []
    opens = True  # whether the run opens a sentence (where any word is capitalised)
    previous = "."

    def close() -> None:
        while run and run[-1] in _PARTICLES:
            run.pop()
        cut = max((i for i, w in enumerate(run) if w in _TITLES), default=-1)
        del run[: cut + 1]
        first = opens and cut < 0  # only a sentence's first word is capitalised for being first
        while run and (run[0] in _LEADING_WORDS or (first and run[0].lower() in common)):
            run.pop(0)
            first = False
        last = run[-1].split("-")[-1] if run else ""
        if any(w in _CALENDAR for w in run):
            pass
        elif len(run) >= 2 and last not in _DEMONYMS and last not in _NOT_NAMES:
            runs.append(tuple(run))
        elif len(run) == 1 and last not in _DEMONYMS:
            singles.add(run[0])
        run.clear()

    for token in _TOKEN.findall(_QUOTED.sub(" | ", text or "")):
        possessive = token.endswith(_POSSESSIVE)
        word = token.removesuffix("s").rstrip("'’") if token.endswith(("'s", "’s")) else token.rstrip("'’")
        if word[:1].isupper():
            if not run:
                opens = previous in _SENTENCE_OPENERS
            run.append(word)
            words.add(word)
        elif run and word in _PARTICLES:
            run.append(word)
        else:
            close()
        if possessive:
            close()
        previous = token
    close()
    return runs, singles, words


def name_runs(text: str, common: frozenset[str] = frozenset()) -> tuple[list[str], set[str]]:
    """The runs of two or more capitalised words in ``text`` (lower-case particles such as "van der" allowed
    inside), and every capitalised word. A possessive ends a run and is dropped ("Okafor's books" -> "Okafor");
    quoted titles are no part of a run, nor are opening question words, honorifics, ranks and imperatives
    ("Follow"), an office and what comes before it ("US President Joe Biden" -> "Joe Biden"), or an opening word
    whose lower-case form is in ``common`` (a sentence-initial "Her" or "Growing"); a run that ends in a
    nationality ("South African"), an office ("Prime Minister") or an award, institution or series ("Caine
    Prize"), or that holds a day, month or holiday ("Christmas Eve"), is none."""
    runs, _, words = _runs(text, common)
    return [" ".join(r) for r in runs], words


def derive_concepts(
    forget_texts: Iterable[str],
    retain_texts: Iterable[str] = (),
    min_count: int = 2,
    min_share: float = 0.3,
    max_concepts: int = 50,
) -> list[str]:
    """Proper names that recur in the forget texts and never appear in the retain texts.

    Used to fill the ``{concepts}`` slot from data when the config gives none (TOFU: the forget authors' names,
    which every one of an author's questions or answers repeats, in full or by surname). A heuristic over
    :func:`name_runs`: a name counts once per text that holds it or, for its last word, the surname alone; the
    shorter of two forms of one name is dropped; a name must recur in ``min_count`` texts and in at least
    ``min_share`` of the texts of the most frequent name, which leaves out book titles, series and places that a
    few questions mention. Give concepts explicitly when the names do not recur.
    """
    forget_texts, retain_texts = list(forget_texts), list(retain_texts)
    # Words written in lower case somewhere are common words, even where a sentence capitalises them.
    common = frozenset(w for t in (*forget_texts, *retain_texts) for w in _TOKEN.findall(t or "") if w.islower())
    # Which texts hold each run and each capitalised word (a surname mention counts for the full name).
    by_run: dict[str, set[int]] = defaultdict(set)
    by_word: dict[str, set[int]] = defaultdict(set)
    for i, text in enumerate(forget_texts):
        runs, words = name_runs(text, common)
        for run in runs:
            by_run[run].add(i)
        for word in words:
            by_word[word].add(i)
    counts = {run: len(texts | by_word.get(run.split()[-1], set())) for run, texts in by_run.items()}
    retain_blob = "\n".join(retain_texts)  # searched only for the names that recur
    counts = {c: n for c, n in counts.items() if n >= min_count and c not in retain_blob}
    # The longest form of a name: drop a candidate inside a longer, nearly as frequent one ("Nkemdirim Okafor").
    kept = [n for n in counts if not any(n != m and n in m and counts[m] * 2 >= counts[n] for m in counts)]
    top = max((counts[n] for n in kept), default=0)
    kept = [n for n in kept if counts[n] >= max(min_count, min_share * top)]
    kept.sort(key=lambda n: (-counts[n], n))
    return kept[:max_concepts]


#: Sources of records made from raw text (``records_from_text``, ``duet-plugin convert muse|wmdp``, the LLM builder).
RAW_TEXT_SOURCES = frozenset({"text", "muse_text", "wmdp_corpus", "llm_questions"})
TEXT_MIN_SHARE = 0.05  # a subject of raw forget text is in at least this share of the forget texts
TEXT_MIN_LIFT = 4.0  # and this many times likelier there than in the retain texts


@dataclass(frozen=True)
class Candidate:
    """A name found in raw forget text: in how many forget and retain texts, and how much likelier in forget."""

    name: str
    forget: int
    retain: int
    lift: float

    def __str__(self) -> str:
        return f"{self.name!r} ({self.forget} forget / {self.retain} retain texts, {self.lift:.1f}x)"


def _name_index(texts: Sequence[str], common: frozenset[str]) -> tuple[dict, dict]:
    """``{name: texts holding it as a run or the end of one}`` and ``{word: texts where it stands alone}``."""
    by_name: dict[tuple[str, ...], set[int]] = defaultdict(set)
    alone: dict[str, set[int]] = defaultdict(set)
    for i, text in enumerate(texts):
        runs, singles, _ = _runs(text, common)
        for run in runs:
            for k in range(len(run) - 1):  # "Washington Joe Biden" (a byline before the story) holds "Joe Biden"
                if run[k][:1].isupper():
                    by_name[run[k:]].add(i)
        for word in singles:
            alone[word].add(i)
    return by_name, alone


def rank_text_candidates(forget_texts: Iterable[str], retain_texts: Iterable[str] = ()) -> list[Candidate]:
    """The names in raw forget text, most frequent first, each counted against the retain text.

    Names are :func:`name_runs` and their endings ("Washington Joe Biden" holds "Joe Biden"); of the forms that end
    in one word the most frequent is the name (the longer of two nearly equal forms), and it also counts the texts
    where that word stands alone ("Mr Biden's"). ``lift`` is the name's share of forget texts over its share of
    retain texts, add-one smoothed (with no retain text it is at most 1).
    """
    forget_texts, retain_texts = list(forget_texts), list(retain_texts)
    common = frozenset(w for t in (*forget_texts, *retain_texts) for w in _TOKEN.findall(t or "") if w.islower())
    f_names, f_alone = _name_index(forget_texts, common)
    r_names, r_alone = _name_index(retain_texts, common)
    # The name of each last word: its most frequent form, or a longer form nearly as frequent.
    by_last: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for name in f_names:
        by_last[name[-1]].append(name)
    head = {}
    for last, forms in by_last.items():
        best = max(forms, key=lambda n: (len(f_names[n]), len(n)))
        longer = [n for n in forms if len(n) > len(best) and n[-len(best) :] == best]
        longer = [n for n in longer if len(f_names[n]) * 2 >= len(f_names[best])]
        head[last] = max(longer, key=lambda n: (len(f_names[n]), len(n)), default=best)
    n_f, n_r = max(len(forget_texts), 1), len(retain_texts)
    out = []
    for name, texts in f_names.items():
        h = head[name[-1]]
        is_head = h == name
        if not is_head and (h[-len(name) :] == name or name[-len(h) :] == h):
            continue  # another form of the head: "President Joe Biden", "Washington Joe Biden"
        forget = len(texts | f_alone.get(name[-1], set())) if is_head else len(texts)
        retain = len(r_names.get(name, set()) | (r_alone.get(name[-1], set()) if is_head else set()))
        lift = (forget / n_f) / ((retain + 1) / (n_r + 1))
        out.append(Candidate(" ".join(name), forget, retain, lift))
    # Of two other forms, one the end of the other, the more frequent one.
    out.sort(key=lambda c: (-c.forget, -c.lift, c.name))
    kept: list[Candidate] = []
    for c in out:
        if not any(c.name.endswith(" " + k.name) or k.name.endswith(" " + c.name) for k in kept):
            kept.append(c)
    return kept


def derive_text_concepts(
    forget_texts: Iterable[str],
    retain_texts: Iterable[str] = (),
    min_count: int = 3,
    min_share: float = TEXT_MIN_SHARE,
    min_lift: float = TEXT_MIN_LIFT,
    max_concepts: int = 5,
) -> tuple[list[str], list[Candidate]]:
    """The few subjects of raw forget text (news, a corpus), and the ranked candidates they were chosen from.

    A subject is a name (:func:`rank_text_candidates`) in at least ``min_count`` and ``min_share`` of the forget
    texts and at least ``min_lift`` times likelier there than in the retain texts: the people and events the forget
    stories are about, not the places, offices, dates and bylines that all news repeats ("Home Office",
    "Washington DC", "Christmas Eve"). At most ``max_concepts``, most frequent first; none when no name stands out
    (forget and retain drawn from the same news, as MUSE-News's are, or no retain text to compare with).
    """
    forget_texts = list(forget_texts)
    candidates = rank_text_candidates(forget_texts, retain_texts)
    n = max(len(forget_texts), 1)
    salient = [c for c in candidates if c.forget >= min_count and c.forget / n >= min_share and c.lift >= min_lift]
    return [c.name for c in salient[:max_concepts]], candidates


def concepts_from_records(forget: Iterable[Any], retain: Iterable[Any] = ()) -> list[str]:
    """What the teacher is told to forget, from unified records (objects or dicts with ``prompt``, ``response``,
    ``concept``, ``source``): the forget records' ``concept`` tags when they have any; else, for records made
    from raw text (:data:`RAW_TEXT_SOURCES`, most of the forget records), :func:`derive_text_concepts` over the
    text they were made from, raising an :class:`OptionError` for ``prefix.concepts`` that shows the top
    candidates when no subject stands out; else (question/answer data such as TOFU) :func:`derive_concepts` over
    the questions and answers."""

    def get(record: Any, key: str) -> Any:
        return record.get(key) if isinstance(record, Mapping) else getattr(record, key, None)

    forget, retain = list(forget), list(retain)
    tagged = sorted({get(r, "concept") for r in forget if get(r, "concept")})
    if tagged:
        return tagged

    def texts(records: Iterable[Any]) -> list[str]:
        return [_record_text(get(r, "prompt"), get(r, "response")) for r in records]

    if sum(get(r, "source") in RAW_TEXT_SOURCES for r in forget) * 2 <= len(forget):
        return derive_concepts(texts(forget), texts(retain))
    concepts, candidates = derive_text_concepts(texts(forget), texts(retain))
    if concepts:
        return concepts
    top = "; ".join(str(c) for c in candidates[:8]) or "none"
    why = "there is no retain text to compare with" if not retain else "no name stands out against the retain text"
    raise OptionError(
        "prefix.concepts",
        f"is not set and cannot be derived: the forget data is raw text ({len(forget)} records) and {why} (a "
        f"subject is a name in at least {TEXT_MIN_SHARE:.0%} of the forget texts and {TEXT_MIN_LIFT:g}x likelier "
        "there than in the retain texts). Set it to what the teacher should forget, a list such as "
        f'\'["Joe Biden","Storm Ciarán"]\' (quoted like this on the command line). Top candidates: {top}.',
    )


def _record_text(prompt: str | None, response: str | None) -> str:
    """The text a query record was made from: a template query (``Continue the following text: ...``, ``Fill in
    the blank: ...``) put back together, else the prompt and the response."""
    prompt, response = prompt or "", response or ""
    continuation = CONTINUATION_PROMPT.split("{")[0]
    cloze = CLOZE_PROMPT.split("{")[0]
    if prompt.startswith(continuation):
        return f"{prompt[len(continuation) :]} {response}".strip()
    if prompt.startswith(cloze) and BLANK in prompt:
        return prompt[len(cloze) :].replace(BLANK, response, 1)
    return f"{prompt} {response}".strip()
