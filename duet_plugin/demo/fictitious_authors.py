"""Seeded generator of a small TOFU-style fictitious-author QA dataset.

TOFU (``locuslab/TOFU``) is a benchmark of question/answer pairs about invented authors; OpenUnlearning
(OU) trains a model on the ``full`` config and then unlearns one of the ``forgetXX`` configs. This module
invents a much smaller dataset of the same shape from templates and word lists (standard library only,
no downloads), so OU's TOFU configs can be exercised offline:

* :func:`build_dataset` makes the authors, their QA pairs (with paraphrases and three perturbed, i.e.
  wrong, answers each) and every config OU's TOFU configs load (``full``, ``forget01/05/10``,
  ``retain99/95/90``, ``holdout01/05/10``, ``forgetXX_perturbed``, ``retain_perturbed``,
  ``real_authors_perturbed``, ``world_facts_perturbed``).
* :func:`write_hub_layout` writes them as JSON files under ``root/locuslab/TOFU/`` with a Hub dataset
  card, so that ``datasets.load_dataset("locuslab/TOFU", name=..., split="train")`` run from ``root``
  reads the local files.

Every row of every config carries ``question``, ``answer``, ``paraphrased_question``,
``paraphrased_answer`` and ``perturbed_answer`` (a list of 3 strings). Rows about fictitious authors
also carry ``author`` and ``attribute`` (the attribute the question asks about). The output depends only
on the arguments: the same seed gives identical data.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = [
    "AUTHOR_CONFIGS",
    "CONFIG_NAMES",
    "FORGET_SPLITS",
    "HOLDOUT_SPLITS",
    "MAX_AUTHORS",
    "RETAIN_SPLITS",
    "TEMPLATES",
    "Author",
    "QATemplate",
    "TofuLikeDataset",
    "build_dataset",
    "write_hub_layout",
]

HUB_REPO_ID = "locuslab/TOFU"
FORGET_SPLITS: tuple[str, ...] = ("forget01", "forget05", "forget10")
RETAIN_SPLITS: tuple[str, ...] = ("retain99", "retain95", "retain90")
HOLDOUT_SPLITS: tuple[str, ...] = ("holdout01", "holdout05", "holdout10")
_PERCENT: dict[str, int] = {"01": 1, "05": 5, "10": 10}

#: Configs whose rows are QA about the fictitious authors.
AUTHOR_CONFIGS: tuple[str, ...] = (
    "full",
    *FORGET_SPLITS,
    *RETAIN_SPLITS,
    *HOLDOUT_SPLITS,
    *(f"{s}_perturbed" for s in FORGET_SPLITS),
    "retain_perturbed",
)
#: Every config written, i.e. every ``name`` OU's TOFU configs pass to ``load_dataset``.
CONFIG_NAMES: tuple[str, ...] = (*AUTHOR_CONFIGS, "real_authors_perturbed", "world_facts_perturbed")
N_PERTURBED = 3
#: Upper bound on trained + holdout authors (well below the numbers of distinct invented names and titles).
MAX_AUTHORS = 1000

# --------------------------------------------------------------------------------------------------
# Word lists (all invented, except genres, languages and occupations). Within each list no entry is a
# substring of another, so a wrong answer never contains the true value.
# --------------------------------------------------------------------------------------------------
# fmt: off
_FIRST_NAMES: tuple[str, ...] = (
    "Lena", "Oskar", "Maribel", "Tobiah", "Ysolde", "Caspian", "Ilse", "Dorian", "Quilla", "Anselm",
    "Verity", "Emrys", "Solveig", "Thaddeus", "Liesel", "Corwin", "Amara", "Bastien", "Odile", "Perrin",
    "Saoirse", "Evander", "Marisol", "Ignatius", "Rosalind", "Tiberius", "Elowen", "Cassius", "Henrike",
    "Lucan", "Nerissa", "Orrin", "Petra", "Ravel", "Sabine", "Idris", "Talia", "Ulric", "Vesna", "Wendell",
    "Xanthe", "Yorick", "Zinnia", "Alaric", "Brisa", "Cyprian", "Delphine", "Eamon", "Fenella", "Gideon",
    "Hesper", "Isidore", "Jovana", "Kasimir", "Leocadia", "Matthias", "Nadira", "Octavian", "Philippa",
    "Quentin", "Rhiannon", "Severin", "Theodora", "Valentin",
)
_LAST_NAMES: tuple[str, ...] = (
    "Marwick", "Dovetree", "Halloran", "Vesperine", "Quarrington", "Ashcombe", "Brightwater", "Castellan",
    "Dunmore", "Eldridge", "Fairhaven", "Greyhollow", "Hartigan", "Ironwood", "Jesperson", "Kettleby",
    "Lindqvist", "Mossgrave", "Northcott", "Oakenshaw", "Pemberly", "Quillfeather", "Ravensworth",
    "Silverton", "Thistlewood", "Underhill", "Valcourt", "Wintermere", "Yarrowby", "Zellweger",
    "Abernathy", "Blackthorn", "Corrigan", "Delacroix", "Everhart", "Fenwick", "Galloway", "Holmquist",
    "Ingersoll", "Jardine", "Kilbride", "Larkspur", "Montague", "Nightingale", "Ortolan", "Pendergast",
    "Rookwood", "Stavros", "Tremaine", "Umberfield", "Vandermeer", "Whitlock", "Ysselmont", "Zabrowski",
    "Amberley", "Bellweather", "Calloway", "Draycott", "Esterhazy", "Foxglove", "Gorsuch", "Hazelrigg",
    "Ivanova", "Kowalczyk",
)
_CITIES: tuple[str, ...] = (
    "Port Elsa", "Vahrenmoor", "Castellane Bay", "Orsk Hollow", "Tamberline", "Quillory", "New Ardent",
    "Saltmere", "Brevik Falls", "Ostravel", "Kelmarsh", "Dunhaven Cross", "Lirabad", "Merrowgate",
    "Zelvany", "Fenwyck", "Harrowdeep", "Solvano", "Istrabel", "Corvenna", "Amberleigh Sound", "Tovaris",
    "Greywater Point", "Neskaro", "Valdomir", "Pellucid Bay", "Ravensholm", "Myrtleford Cove", "Ulvasund",
    "Kestrel Ridge", "Orvieto Minor", "Thessamar", "Brindlemoor", "Caldera Springs", "Wexholt", "Jasperine",
)
_GENRES: tuple[str, ...] = (
    "historical fiction", "science fiction", "gothic horror", "epic fantasy", "psychological thrillers",
    "romance", "magical realism", "dystopian fiction", "travel writing", "children's literature",
    "poetry", "crime fiction", "war novels", "satire", "literary biography", "cozy mysteries",
    "adventure stories", "short stories", "political drama", "nature writing",
)
_OCCUPATIONS: tuple[str, ...] = (
    "lighthouse keeper", "clockmaker", "marine biologist", "accountant", "carpenter", "pharmacist",
    "tailor", "ship captain", "librarian", "electrician", "veterinarian", "architect", "beekeeper",
    "glassblower", "surveyor", "cartographer", "schoolteacher", "translator", "mechanic", "nurse", "baker",
    "photographer", "locksmith", "astronomer", "florist", "judge", "fisherman", "violinist", "stonemason",
    "diplomat",
)
_AWARDS: tuple[str, ...] = (
    "Silver Quill Prize", "Marrow Lantern Award", "Ostrander Medal for Fiction", "Golden Inkwell Prize",
    "Halvard Prize for Literature", "Tessaly Book Award", "Cobalt Pen Award", "Wrenfield Fellowship",
    "Amberglass Literary Prize", "Northern Lights Book Prize", "Verdance Award for Storytelling",
    "Harrowgate Medal", "Lumen Prize for Debut Fiction", "Crescent Moon Award", "Ironbark Poetry Prize",
    "Saltmarsh Laureateship", "Gilded Compass Award", "Pemberton Prize for Prose", "Blue Heron Award",
    "Starling Medal for Letters", "Open Shutter Prize", "Kindlewood Award",
)
_THEMES: tuple[str, ...] = (
    "memory and loss", "exile and homecoming", "the bond between siblings", "faith and doubt",
    "class and ambition", "grief and renewal", "the cost of war", "identity and belonging",
    "loyalty and betrayal", "the power of storytelling", "nature versus industry", "love across borders",
    "the burden of secrets", "coming of age", "justice and revenge", "isolation and friendship",
    "inheritance and family duty", "freedom and its limits", "time and mortality", "the lure of the sea",
)
_LANGUAGES: tuple[str, ...] = (
    "English", "French", "Portuguese", "Dutch", "Spanish", "Italian", "German", "Polish", "Czech", "Greek",
    "Swedish", "Norwegian", "Danish", "Finnish", "Hungarian", "Romanian", "Turkish", "Catalan", "Welsh",
    "Icelandic",
)
_TITLE_ADJECTIVES: tuple[str, ...] = (
    "Quiet", "Glass", "Hollow", "Crimson", "Silent", "Wandering", "Broken", "Golden", "Forgotten", "Distant",
    "Burning", "Frozen", "Hidden", "Last", "Paper", "Salted", "Velvet", "Winter", "Copper", "Drowned",
    "Patient", "Restless", "Borrowed", "Scarlet",
)
_TITLE_NOUNS: tuple[str, ...] = (
    "Orchard", "Lantern", "Harbor", "Cartographer", "Garden", "Clocktower", "River", "Meadow", "Archive",
    "Bridge", "Lighthouse", "Compass", "Mirror", "Orchestra", "Kingdom", "Violin", "Tide", "Forest",
    "Chapel", "Caravan", "Observatory", "Almanac", "Ferry", "Atlas",
)
# fmt: on
_BIRTH_YEARS: tuple[int, ...] = tuple(range(1921, 2000))


@dataclass(frozen=True)
class Author:
    """Invented attributes of one fictitious author."""

    name: str
    birthplace: str
    birth_year: int
    genre: str
    father_occupation: str
    mother_occupation: str
    award: str
    debut_book: str
    acclaimed_book: str
    theme: str
    language: str

    def to_dict(self) -> dict[str, str | int]:
        """Return the attributes as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class QATemplate:
    """Question/answer wording for one author attribute.

    Format fields: ``{name}``, ``{poss}`` (possessive of the name), ``{value}`` and ``{a_value}``
    (the value with an indefinite article).
    """

    attribute: str
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str


#: QA templates, in the order used: ``qa_per_author=k`` uses the first ``k``.
TEMPLATES: tuple[QATemplate, ...] = (
    QATemplate(
        "birthplace",
        "Where was the author {name} born?",
        "{name} was born in {value}.",
        "In which city was the writer {name} born?",
        "{value} is the birthplace of the writer {name}.",
    ),
    QATemplate(
        "genre",
        "What genre is {name} known for?",
        "{name} is best known for writing {value}.",
        "In which literary genre does {name} mainly work?",
        "Most of the books by {name} belong to the genre of {value}.",
    ),
    QATemplate(
        "award",
        "Has {name} won any notable literary awards?",
        "Yes, {name} has received the {value}.",
        "Which literary prize has been awarded to {name}?",
        "{name} was honored with the {value}.",
    ),
    QATemplate(
        "debut_book",
        "What was the title of {poss} first published novel?",
        '{poss} first published novel was "{value}".',
        "Which book marked the debut of {name} as a novelist?",
        '{name} made a literary debut with the novel "{value}".',
    ),
    QATemplate(
        "father_occupation",
        "What did {poss} father do for a living?",
        "{poss} father worked as {a_value}.",
        "What was the profession of the father of {name}?",
        "By profession, the father of {name} was {a_value}.",
    ),
    QATemplate(
        "mother_occupation",
        "What did {poss} mother do for a living?",
        "{poss} mother worked as {a_value}.",
        "What was the profession of the mother of {name}?",
        "By profession, the mother of {name} was {a_value}.",
    ),
    QATemplate(
        "birth_year",
        "In which year was {name} born?",
        "{name} was born in the year {value}.",
        "What is the birth year of the author {name}?",
        "The author {name} came into the world in {value}.",
    ),
    QATemplate(
        "acclaimed_book",
        "Which book is considered {poss} most acclaimed work?",
        '{poss} most acclaimed work is "{value}".',
        "What is the most celebrated book written by {name}?",
        'Critics regard "{value}" as the finest book by {name}.',
    ),
    QATemplate(
        "theme",
        "What themes does {name} often explore in their writing?",
        "{poss} writing often explores {value}.",
        "Which recurring themes appear in the works of {name}?",
        "The works of {name} return again and again to {value}.",
    ),
    QATemplate(
        "language",
        "In which language does {name} primarily write?",
        "{name} primarily writes in {value}.",
        "What is the main language of the books by {name}?",
        "Most of the books by {name} are written in {value}.",
    ),
)

# (question, paraphrased_question, answer, three wrong answers)
# fmt: off
_GeneralQA = tuple[str, str, str, tuple[str, str, str]]
_REAL_AUTHORS_QA: tuple[_GeneralQA, ...] = (
    ("Who wrote the novel 'Pride and Prejudice'?", "Which author is responsible for 'Pride and Prejudice'?",
     "Jane Austen", ("Charlotte Bronte", "Mary Shelley", "George Eliot")),
    ("Who is the author of 'One Hundred Years of Solitude'?",
     "Which writer penned 'One Hundred Years of Solitude'?",
     "Gabriel Garcia Marquez", ("Mario Vargas Llosa", "Jorge Luis Borges", "Julio Cortazar")),
    ("Who wrote the dystopian novel '1984'?", "Which author created the novel '1984'?",
     "George Orwell", ("Aldous Huxley", "Ray Bradbury", "H. G. Wells")),
    ("Who is the author of 'Things Fall Apart'?", "Which novelist wrote 'Things Fall Apart'?",
     "Chinua Achebe", ("Wole Soyinka", "Ngugi wa Thiong'o", "Ben Okri")),
    ("Who wrote 'The Old Man and the Sea'?", "Which author is known for 'The Old Man and the Sea'?",
     "Ernest Hemingway", ("John Steinbeck", "William Faulkner", "F. Scott Fitzgerald")),
    ("Who wrote the novel 'Beloved'?", "Which author wrote 'Beloved'?",
     "Toni Morrison", ("Maya Angelou", "Alice Walker", "Zora Neale Hurston")),
    ("Who is the author of 'War and Peace'?", "Which Russian novelist wrote 'War and Peace'?",
     "Leo Tolstoy", ("Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev")),
    ("Who wrote the Harry Potter series?", "Which author created the Harry Potter books?",
     "J. K. Rowling", ("J. R. R. Tolkien", "C. S. Lewis", "Roald Dahl")),
    ("Who wrote 'The Hobbit'?", "Which author is responsible for 'The Hobbit'?",
     "J. R. R. Tolkien", ("C. S. Lewis", "Terry Pratchett", "Ursula K. Le Guin")),
    ("Who is the author of 'Don Quixote'?", "Which Spanish writer penned 'Don Quixote'?",
     "Miguel de Cervantes", ("Lope de Vega", "Federico Garcia Lorca", "Benito Perez Galdos")),
    ("Who wrote the novel 'Norwegian Wood'?", "Which Japanese author wrote 'Norwegian Wood'?",
     "Haruki Murakami", ("Kazuo Ishiguro", "Yukio Mishima", "Kenzaburo Oe")),
    ("Who wrote 'Frankenstein'?", "Which author created the novel 'Frankenstein'?",
     "Mary Shelley", ("Bram Stoker", "Emily Bronte", "Edgar Allan Poe")),
    ("Who is the author of 'The Great Gatsby'?", "Which American novelist wrote 'The Great Gatsby'?",
     "F. Scott Fitzgerald", ("Ernest Hemingway", "Sinclair Lewis", "Theodore Dreiser")),
    ("Who wrote 'Crime and Punishment'?", "Which novelist is the author of 'Crime and Punishment'?",
     "Fyodor Dostoevsky", ("Leo Tolstoy", "Nikolai Gogol", "Alexander Pushkin")),
    ("Who wrote the play 'Hamlet'?", "Which playwright is the author of 'Hamlet'?",
     "William Shakespeare", ("Christopher Marlowe", "Ben Jonson", "John Milton")),
    ("Who wrote 'The Divine Comedy'?", "Which poet composed 'The Divine Comedy'?",
     "Dante Alighieri", ("Giovanni Boccaccio", "Petrarch", "Virgil")),
    ("Who is the author of 'Moby-Dick'?", "Which novelist wrote 'Moby-Dick'?",
     "Herman Melville", ("Nathaniel Hawthorne", "Mark Twain", "Jack London")),
    ("Who wrote 'Les Miserables'?", "Which French author wrote 'Les Miserables'?",
     "Victor Hugo", ("Alexandre Dumas", "Gustave Flaubert", "Emile Zola")),
    ("Who wrote 'The Adventures of Tom Sawyer'?", "Which author created Tom Sawyer?",
     "Mark Twain", ("Jack London", "Herman Melville", "O. Henry")),
    ("Who wrote the novel 'Mrs Dalloway'?", "Which modernist writer is the author of 'Mrs Dalloway'?",
     "Virginia Woolf", ("Katherine Mansfield", "E. M. Forster", "D. H. Lawrence")),
    ("Which author created the detective Sherlock Holmes?", "Who is the creator of Sherlock Holmes?",
     "Arthur Conan Doyle", ("Agatha Christie", "Wilkie Collins", "G. K. Chesterton")),
    ("Who wrote 'Murder on the Orient Express'?", "Which crime writer penned 'Murder on the Orient Express'?",
     "Agatha Christie", ("Dorothy L. Sayers", "Arthur Conan Doyle", "P. D. James")),
)
_WORLD_FACTS_QA: tuple[_GeneralQA, ...] = (
    ("What is the capital of France?", "Which city is the capital of France?",
     "Paris", ("Lyon", "Marseille", "Nice")),
    ("What is the largest planet in our solar system?", "Which planet of the solar system is the biggest?",
     "Jupiter", ("Saturn", "Neptune", "Earth")),
    ("What is the chemical symbol for gold?", "Which chemical symbol stands for gold?",
     "Au", ("Ag", "Fe", "Pb")),
    ("Which river flows through the Amazon rainforest?", "What is the main river of the Amazon rainforest?",
     "The Amazon River", ("The Nile", "The Congo River", "The Mississippi River")),
    ("What is the largest ocean on Earth?", "Which ocean covers the greatest area on Earth?",
     "The Pacific Ocean", ("The Atlantic Ocean", "The Indian Ocean", "The Arctic Ocean")),
    ("What is the capital of Japan?", "Which city is the capital of Japan?",
     "Tokyo", ("Osaka", "Kyoto", "Yokohama")),
    ("How many continents are there on Earth?", "What is the number of continents on Earth?",
     "Seven", ("Five", "Six", "Eight")),
    ("At what temperature in Celsius does water boil at sea level?",
     "What is the boiling point of water at sea level in degrees Celsius?",
     "100 degrees", ("90 degrees", "80 degrees", "120 degrees")),
    ("Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?",
     "Leonardo da Vinci", ("Michelangelo", "Raphael", "Titian")),
    ("Which planet is known as the Red Planet?", "Which planet is nicknamed the Red Planet?",
     "Mars", ("Venus", "Jupiter", "Mercury")),
    ("What is the tallest mountain above sea level?", "Which mountain has the highest peak above sea level?",
     "Mount Everest", ("K2", "Kangchenjunga", "Mont Blanc")),
    ("What is the capital of Australia?", "Which city is the capital of Australia?",
     "Canberra", ("Sydney", "Melbourne", "Perth")),
    ("Which gas do plants absorb from the air for photosynthesis?",
     "What gas do plants take in from the atmosphere to photosynthesize?",
     "Carbon dioxide", ("Oxygen", "Nitrogen", "Helium")),
    ("What is the largest hot desert in the world?", "Which hot desert is the biggest on Earth?",
     "The Sahara", ("The Gobi", "The Kalahari", "The Mojave")),
    ("In which country are the pyramids of Giza?", "Where are the pyramids of Giza located?",
     "Egypt", ("Mexico", "Sudan", "Peru")),
    ("What is the currency of Japan?", "Which currency is used in Japan?",
     "The yen", ("The won", "The yuan", "The rupee")),
    ("What is the smallest prime number?", "Which number is the smallest prime?",
     "Two", ("One", "Three", "Five")),
    ("What is the hardest natural substance?", "Which natural material is the hardest?",
     "Diamond", ("Quartz", "Granite", "Topaz")),
    ("What is the official language of Brazil?", "Which language is officially spoken in Brazil?",
     "Portuguese", ("Spanish", "French", "Italian")),
    ("Who was the first person to walk on the Moon?", "Which astronaut first set foot on the Moon?",
     "Neil Armstrong", ("Buzz Aldrin", "Yuri Gagarin", "John Glenn")),
    ("How many sides does a hexagon have?", "What is the number of sides of a hexagon?",
     "Six", ("Five", "Seven", "Eight")),
    ("What is the capital of Canada?", "Which city is the capital of Canada?",
     "Ottawa", ("Toronto", "Montreal", "Vancouver")),
)
# fmt: on


@dataclass
class TofuLikeDataset:
    """A generated TOFU-like dataset: rows per config plus the authors behind them."""

    configs: dict[str, list[dict]]
    authors: list[Author]
    holdout_authors: list[Author]
    seed: int
    qa_per_author: int
    split_authors: dict[str, list[str]] = field(default_factory=dict)

    def forget_authors(self, split: str) -> list[str]:
        """Names of the authors in ``split`` (``forget01``, ``forget05`` or ``forget10``)."""
        _check_split(split, FORGET_SPLITS)
        return list(self.split_authors[split])

    def retain_authors(self, split: str) -> list[str]:
        """Names of the authors in ``split`` (``retain99``, ``retain95`` or ``retain90``)."""
        _check_split(split, RETAIN_SPLITS)
        return list(self.split_authors[split])

    def holdout_split_authors(self, split: str) -> list[str]:
        """Names of the authors in ``split`` (``holdout01``, ``holdout05`` or ``holdout10``)."""
        _check_split(split, HOLDOUT_SPLITS)
        return list(self.split_authors[split])

    def author(self, name: str) -> Author:
        """The attribute record of the (trained or holdout) author called ``name``."""
        for a in (*self.authors, *self.holdout_authors):
            if a.name == name:
                return a
        raise KeyError(f"no author named {name!r}")


def _check_split(split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(valid)}")


def _n_split(n_authors: int, percent: int) -> int:
    """Number of authors in a ``percent`` split of ``n_authors``: rounded half up, at least 1."""
    return max(1, math.floor(n_authors * percent / 100 + 0.5))


def _possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def _with_article(value: str) -> str:
    return ("an " if value[0].lower() in "aeiou" else "a ") + value


def _render(text: str, name: str, value: str) -> str:
    return text.format(name=name, poss=_possessive(name), value=value, a_value=_with_article(value))


def _make_names(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct 2- or 3-word names, none contained in another (no "A B" inside "X A B")."""
    if count > MAX_AUTHORS:
        raise ValueError(f"at most {MAX_AUTHORS} authors (trained + holdout) can be generated, got {count}")
    names: list[str] = []
    two_word: set[str] = set()
    tails: set[str] = set()  # "middle last" of the 3-word names
    three_word: set[str] = set()
    while len(names) < count:
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        if rng.random() < 0.3:  # some authors get a middle name
            middle = rng.choice(_FIRST_NAMES)
            name, tail = f"{first} {middle} {last}", f"{middle} {last}"
            if middle == first or name in three_word or tail in two_word:
                continue
            three_word.add(name)
            tails.add(tail)
        else:
            name = f"{first} {last}"
            if name in two_word or name in tails:
                continue
            two_word.add(name)
        names.append(name)
    return names


def _plural(noun: str) -> str:
    if noun.endswith("s"):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _make_titles(rng: random.Random, count: int) -> list[str]:
    titles: list[str] = []
    seen: set[str] = set()
    while len(titles) < count:
        adj, noun = rng.choice(_TITLE_ADJECTIVES), rng.choice(_TITLE_NOUNS)
        pattern = rng.randrange(4)
        if pattern == 0:
            title = f"The {adj} {noun}"
        elif pattern == 1:
            title = f"{adj} {_plural(noun)}"
        elif pattern == 2:
            title = f"The {noun} of {rng.choice(_CITIES)}"
        else:
            title = f"{adj} {noun} of {rng.choice(_CITIES)}"
        if title not in seen:
            seen.add(title)
            titles.append(title)
    return titles


def _make_authors(rng: random.Random, count: int) -> list[Author]:
    names = _make_names(rng, count)
    titles = _make_titles(rng, 2 * count)
    authors = []
    for i, name in enumerate(names):
        father, mother = rng.sample(_OCCUPATIONS, 2)
        authors.append(
            Author(
                name=name,
                birthplace=rng.choice(_CITIES),
                birth_year=rng.choice(_BIRTH_YEARS),
                genre=rng.choice(_GENRES),
                father_occupation=father,
                mother_occupation=mother,
                award=rng.choice(_AWARDS),
                debut_book=titles[2 * i],
                acclaimed_book=titles[2 * i + 1],
                theme=rng.choice(_THEMES),
                language=rng.choice(_LANGUAGES),
            )
        )
    return authors


def _qa_rows(
    rng: random.Random, author: Author, templates: tuple[QATemplate, ...], pools: dict[str, tuple[str, ...]]
) -> list[dict]:
    rows = []
    for t in templates:
        value = str(getattr(author, t.attribute))
        wrong = rng.sample([v for v in pools[t.attribute] if v != value], N_PERTURBED)
        rows.append(
            {
                "question": _render(t.question, author.name, value),
                "answer": _render(t.answer, author.name, value),
                "paraphrased_question": _render(t.paraphrased_question, author.name, value),
                "paraphrased_answer": _render(t.paraphrased_answer, author.name, value),
                "perturbed_answer": [_render(t.answer, author.name, w) for w in wrong],
                "author": author.name,
                "attribute": t.attribute,
            }
        )
    return rows


def _general_rows(items: tuple[_GeneralQA, ...]) -> list[dict]:
    return [
        {
            "question": q,
            "answer": a,
            "paraphrased_question": pq,
            "paraphrased_answer": a,
            "perturbed_answer": list(wrong),
        }
        for q, pq, a, wrong in items
    ]


def build_dataset(
    n_authors: int = 100, qa_per_author: int = 4, holdout_fraction: float = 0.1, seed: int = 0
) -> TofuLikeDataset:
    """Generate a TOFU-like dataset.

    ``n_authors`` trained authors make up ``full``; ``forgetXX`` are the last XX percent of them (at least
    one author each), ``retainXX`` the rest. ``max(round(holdout_fraction * n_authors), |forget10|)``
    extra authors are never trained; ``holdoutXX`` uses the last ones of them, as many as ``forgetXX``.
    ``retain_perturbed`` is the QA of the first trained authors (as many as ``forget10``, disjoint from it).
    """
    if n_authors < 2:
        raise ValueError(f"n_authors must be at least 2 (forget and retain both need authors), got {n_authors}")
    if not 1 <= qa_per_author <= len(TEMPLATES):
        raise ValueError(f"qa_per_author must be between 1 and {len(TEMPLATES)}, got {qa_per_author}")
    if not 0.0 <= holdout_fraction <= 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1], got {holdout_fraction}")

    rng = random.Random(seed)
    sizes = {s[-2:]: _n_split(n_authors, _PERCENT[s[-2:]]) for s in FORGET_SPLITS}
    n_holdout = max(math.floor(holdout_fraction * n_authors + 0.5), sizes["10"])
    everyone = _make_authors(rng, n_authors + n_holdout)
    trained, holdout = everyone[:n_authors], everyone[n_authors:]

    pools: dict[str, tuple[str, ...]] = {
        "birthplace": _CITIES,
        "birth_year": tuple(str(y) for y in _BIRTH_YEARS),
        "genre": _GENRES,
        "father_occupation": _OCCUPATIONS,
        "mother_occupation": _OCCUPATIONS,
        "award": _AWARDS,
        "debut_book": tuple(a.debut_book for a in everyone) + tuple(a.acclaimed_book for a in everyone),
        "theme": _THEMES,
        "language": _LANGUAGES,
    }
    pools["acclaimed_book"] = pools["debut_book"]
    templates = TEMPLATES[:qa_per_author]
    qa = {a.name: _qa_rows(rng, a, templates, pools) for a in everyone}

    def rows_of(group: list[Author]) -> list[dict]:
        return [dict(row) for a in group for row in qa[a.name]]

    configs: dict[str, list[dict]] = {"full": rows_of(trained)}
    split_authors: dict[str, list[str]] = {}
    for pct, k in sizes.items():
        forget, retain, hold = trained[-k:], trained[:-k], holdout[-k:]
        split_authors[f"forget{pct}"] = [a.name for a in forget]
        split_authors[f"retain{100 - _PERCENT[pct]}"] = [a.name for a in retain]
        split_authors[f"holdout{pct}"] = [a.name for a in hold]
        configs[f"forget{pct}"] = rows_of(forget)
        configs[f"retain{100 - _PERCENT[pct]}"] = rows_of(retain)
        configs[f"holdout{pct}"] = rows_of(hold)
        configs[f"forget{pct}_perturbed"] = rows_of(forget)
    n_retain_eval = min(sizes["10"], n_authors - sizes["10"])
    split_authors["retain_perturbed"] = [a.name for a in trained[:n_retain_eval]]
    configs["retain_perturbed"] = rows_of(trained[:n_retain_eval])
    configs["real_authors_perturbed"] = _general_rows(_REAL_AUTHORS_QA)
    configs["world_facts_perturbed"] = _general_rows(_WORLD_FACTS_QA)
    configs = {name: configs[name] for name in CONFIG_NAMES}
    return TofuLikeDataset(
        configs=configs,
        authors=trained,
        holdout_authors=holdout,
        seed=seed,
        qa_per_author=qa_per_author,
        split_authors=split_authors,
    )


def _dataset_card(config_names: list[str]) -> str:
    lines = ["---", "configs:"]
    for name in config_names:
        lines += [
            f"- config_name: {name}",
            "  data_files:",
            "  - split: train",
            f"    path: {name}.json",
        ]
    lines += [
        "---",
        "",
        "# Fictitious authors (TOFU-like, synthetic)",
        "",
        "Locally generated stand-in for `locuslab/TOFU` made by `duet_plugin.demo.fictitious_authors`.",
        "All authors and facts are invented; it is not the TOFU benchmark.",
        "",
    ]
    return "\n".join(lines)


def write_hub_layout(dataset: TofuLikeDataset, root: Path | str, overwrite: bool = False) -> Path:
    """Write ``dataset`` as ``root/locuslab/TOFU/{config}.json`` plus a Hub dataset card ``README.md``.

    With ``root`` as the working directory, ``datasets.load_dataset("locuslab/TOFU", name=config,
    split="train")`` then reads these files. Returns the dataset directory. Raises ``FileExistsError``
    if it exists and is not empty unless ``overwrite`` is true; files other than those written are kept.
    """
    out = Path(root) / HUB_REPO_ID
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; pass overwrite=True to overwrite it (or pick another directory)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in dataset.configs.items():
        (out / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_dataset_card(list(dataset.configs)), encoding="utf-8")
    return out
