"""Behaviours under study: prompt pairs for evaluation and the text corpus the tiny model learns from.

Two behaviours, each a (clean, corrupted) prompt pair with a one-token answer:

- ``ioi``: indirect-object identification. "When Mary and John went to the store, John gave a
  drink to" -> " Mary". The corrupted prompt repeats the *other* name as subject ("..., Mary gave
  a drink to"), so a model that does IOI prefers the foil " John" there and the logit difference
  target - foil changes sign. This is the contrast that activation patching needs.
- ``capitals``: factual recall. "The capital of France is" -> " Paris"; the corrupted prompt asks
  about another country in the same template, whose capital is the foil.

The vocabulary (names, places, objects, countries, capitals) and every template live here as
module-level tuples, so the prompts, the training corpus and the tokenizer share one vocabulary.
Every vocabulary word is used with a leading space so it is a single token once the tokenizer
has been trained on the corpus.

Plain Python: no torch, no dagster.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BEHAVIOURS: tuple[str, ...] = ("ioi", "capitals")

# --------------------------------------------------------------------------- vocabulary
NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "Anna", "James", "Sarah", "David", "Emma",
    "Paul", "Laura", "Mark", "Kate", "Peter", "Lucy", "Daniel", "Grace", "Michael", "Rachel",
)
PLACES: tuple[str, ...] = (
    "store", "park", "school", "garden", "office", "beach", "market", "station",
)
# All start with a consonant so "a {object}" is always grammatical.
OBJECTS: tuple[str, ...] = (
    "drink", "book", "ring", "letter", "ball", "gift", "key", "flower",
)
# (country, capital): real facts, every capital a single word.
COUNTRY_CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"), ("Hungary", "Budapest"),
)
COUNTRIES: tuple[str, ...] = tuple(country for country, _ in COUNTRY_CAPITALS)
CAPITALS: tuple[str, ...] = tuple(capital for _, capital in COUNTRY_CAPITALS)

# --------------------------------------------------------------------------- templates
# IOI: {a} and {b} are introduced, {s} (one of them) is the subject; the answer is the other one.
# Every name follows a space, so " Mary" is the same token wherever it appears. The longest
# sentence (with its answer, full stop and EOS) is 18 tokens: the tiny model's training window.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {a} and {b} went to the {place}, {s} gave a {object} to",
    "After {a} and {b} arrived at the {place}, {s} handed a {object} to",
    "While {a} and {b} were working at the {place}, {s} passed a {object} to",
    "Then {a} and {b} were at the {place}, and {s} gave a {object} to",
    "Once {a} and {b} met at the {place}, {s} sent a {object} to",
)
CAPITAL_TEMPLATES: tuple[str, ...] = (
    "The capital of {country} is",
    "The capital city of {country} is",
    "The government of {country} sits in",
    "In {country}, the capital is",
    "Everyone knows that the capital of {country} is",
)
# Filler: the same words in other roles, so the corpus (and the SAEs trained on its activations)
# is not only the two behaviours. None of these contradicts a fact or an IOI answer.
FILLER_TEMPLATES: tuple[str, ...] = (
    "Yesterday {name} went to the {place}.",
    "Today {name} has a {object}.",
    "At the {place}, {name} found a {object}.",
    "Last year {name} visited {country}.",
    "The city of {capital} is in {country}.",
    "Later {name} moved to {capital}.",
    "The {object} is in the {place}.",
    "Then {name} bought a {object} at the {place}.",
)

# Mixture of the training corpus: IOI needs the most examples because it has to generalise to
# unseen name/place/object combinations; capitals are 100 facts to memorise.
_CORPUS_MIX: tuple[tuple[str, float], ...] = (("ioi", 0.45), ("capitals", 0.25), ("filler", 0.30))


@dataclass(frozen=True)
class PromptPair:
    """One evaluation item. ``target``/``foil`` carry their leading space (" Mary"); prompts have no
    trailing space, so the answer is the next token."""

    id: str
    behaviour: str
    clean: str
    corrupted: str
    target: str
    foil: str


# --------------------------------------------------------------------------- sampling
def _check_behaviour(behaviour: str) -> None:
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; valid behaviours: {', '.join(BEHAVIOURS)}")


def _ioi_pair(rng: random.Random) -> tuple[str, str, str, str]:
    """(clean, corrupted, target, foil): the corrupted prompt makes the indirect object the subject."""
    template = rng.choice(IOI_TEMPLATES)
    io, s = rng.sample(NAMES, 2)
    # Both orders: the indirect object is introduced first (ABB) or second (BAB).
    a, b = (io, s) if rng.random() < 0.5 else (s, io)
    fields = dict(a=a, b=b, place=rng.choice(PLACES), object=rng.choice(OBJECTS))
    clean = template.format(s=s, **fields)
    corrupted = template.format(s=io, **fields)
    return clean, corrupted, " " + io, " " + s


def _capitals_pairs(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """Every (clean, corrupted, target, foil) for capitals, shuffled, with each distinct clean prompt
    appearing once before any clean prompt repeats (with another corrupted country)."""
    triples = [
        (template, i, j)
        for template in CAPITAL_TEMPLATES
        for i in range(len(COUNTRY_CAPITALS))
        for j in range(len(COUNTRY_CAPITALS))
        if i != j
    ]
    rng.shuffle(triples)
    seen: dict[tuple[str, int], int] = {}
    rounds = []
    for template, i, _ in triples:
        rounds.append(seen.get((template, i), 0))
        seen[(template, i)] = rounds[-1] + 1
    # Stable sort by round: round 0 holds each clean prompt once, in shuffled order.
    ordered = [t for _, t in sorted(zip(rounds, triples), key=lambda rt: rt[0])]
    pairs = []
    for template, i, j in ordered:
        (country, capital), (other_country, other_capital) = COUNTRY_CAPITALS[i], COUNTRY_CAPITALS[j]
        pairs.append((
            template.format(country=country),
            template.format(country=other_country),
            " " + capital,
            " " + other_capital,
        ))
    return pairs


def n_distinct_prompts(behaviour: str) -> int:
    """How many distinct prompt pairs ``generate_prompts`` can produce for a behaviour."""
    _check_behaviour(behaviour)
    n_countries = len(COUNTRY_CAPITALS)
    if behaviour == "capitals":
        return len(CAPITAL_TEMPLATES) * n_countries * (n_countries - 1)
    # Clean prompt determines the corrupted one: template x ordered name pair x order x place x object.
    return len(IOI_TEMPLATES) * len(NAMES) * (len(NAMES) - 1) * 2 * len(PLACES) * len(OBJECTS)


def generate_prompts(behaviour: str, n: int, seed: int) -> list[PromptPair]:
    """``n`` distinct prompt pairs of one behaviour, the same list for the same ``seed``.

    IOI pairs are distinct clean prompts drawn at random (from a stream separate from the training
    corpus); capitals cover every distinct clean prompt before any repeats with another foil.
    """
    _check_behaviour(behaviour)
    if n < 0 or n > n_distinct_prompts(behaviour):
        raise ValueError(f"n={n} out of range for {behaviour!r}: 0..{n_distinct_prompts(behaviour)}")
    # A string seed hashes with sha512 inside random.Random: stable across processes and
    # PYTHONHASHSEED, and a stream of its own per behaviour.
    rng = random.Random(f"prompts:{behaviour}:{seed}")
    if behaviour == "capitals":
        pairs = _capitals_pairs(rng)[:n]
    else:
        pairs, seen = [], set()
        while len(pairs) < n:
            pair = _ioi_pair(rng)
            if pair[0] not in seen:
                seen.add(pair[0])
                pairs.append(pair)
    return [
        PromptPair(id=f"{behaviour}-{k:05d}", behaviour=behaviour, clean=clean, corrupted=corrupted,
                   target=target, foil=foil)
        for k, (clean, corrupted, target, foil) in enumerate(pairs)
    ]


# --------------------------------------------------------------------------- corpus
def _filler_sentence(rng: random.Random) -> str:
    country, capital = rng.choice(COUNTRY_CAPITALS)
    return rng.choice(FILLER_TEMPLATES).format(
        name=rng.choice(NAMES), place=rng.choice(PLACES), object=rng.choice(OBJECTS),
        country=country, capital=capital,
    )


def generate_corpus(n_sentences: int, seed: int) -> list[str]:
    """``n_sentences`` complete sentences mixing IOI, capitals and filler, the same for a seed.

    IOI and capitals sentences are their prompts with the answer and a full stop appended
    ("..., John gave a drink to Mary."); this corpus trains the tiny model and its tokenizer and is
    later the token corpus the SAEs are trained on.
    """
    if n_sentences < 0:
        raise ValueError(f"n_sentences must be >= 0, got {n_sentences}")
    rng = random.Random(f"corpus:{seed}")
    kinds = [kind for kind, _ in _CORPUS_MIX]
    weights = [weight for _, weight in _CORPUS_MIX]
    sentences = []
    for _ in range(n_sentences):
        kind = rng.choices(kinds, weights)[0]
        if kind == "ioi":
            clean, _, target, _ = _ioi_pair(rng)
            sentences.append(f"{clean}{target}.")
        elif kind == "capitals":
            country, capital = rng.choice(COUNTRY_CAPITALS)
            sentences.append(f"{rng.choice(CAPITAL_TEMPLATES).format(country=country)} {capital}.")
        else:
            sentences.append(_filler_sentence(rng))
    return sentences
