"""Synthetic MNLI-like and QQP-like data for the demo and the tests, written in GLUE's original
TSV layout so that the real parser (prepare_glue.parse_glue_tsv) reads it.

The labels follow from rules a small model has to learn (synonyms, antonyms, negation, added
information, changed entities) and carry some label noise, so accuracy is well above chance but
below 100 %. MNLI's mismatched dev split is another "genre": premises with the place fronted, a sentence shape
never seen in training.
A few rows are malformed on purpose, as in the real files: gold label "-", a short row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from kdsweep.core.io import atomic_path
from kdsweep.core.spec import setting

# verb: (past tense, synonym past, antonym-ish past, base form)
VERBS = [
    ("painted", "coloured", "scraped", "paint"),
    ("built", "constructed", "demolished", "build"),
    ("bought", "purchased", "sold", "buy"),
    ("opened", "unlocked", "closed", "open"),
    ("found", "discovered", "lost", "find"),
    ("cleaned", "washed", "dirtied", "clean"),
    ("repaired", "fixed", "broke", "repair"),
    ("carried", "hauled", "dropped", "carry"),
    ("liked", "enjoyed", "hated", "like"),
    ("started", "began", "stopped", "start"),
    ("filled", "loaded", "emptied", "fill"),
    ("hid", "concealed", "revealed", "hide"),
]
ADJS = ["old", "young", "tall", "quiet", "angry", "happy", "tired", "clever", "famous", "busy", "shy", "brave"]
OBJ_ADJS = ["red", "small", "large", "wooden", "broken", "new", "heavy", "green", "cheap", "strange"]
SUBJECTS = [
    "farmer",
    "teacher",
    "doctor",
    "child",
    "sailor",
    "baker",
    "pilot",
    "nurse",
    "student",
    "artist",
    "driver",
    "writer",
    "singer",
    "lawyer",
    "guard",
    "chef",
]
OBJECTS = [
    "barn",
    "boat",
    "house",
    "box",
    "door",
    "car",
    "bridge",
    "wall",
    "table",
    "window",
    "fence",
    "shop",
    "cart",
    "chair",
    "tower",
    "garden",
]
PLACES = [
    "near the river",
    "in the village",
    "behind the school",
    "on the hill",
    "by the road",
    "in the city",
    "at the harbour",
    "under the trees",
]
EXTRAS = [
    "for his daughter",
    "because it rained",
    "twice last week",
    "for a lot of money",
    "with great care",
    "before the festival",
    "after a long argument",
    "to win a prize",
]
HYPERNYM = {"person": "someone"}

MNLI_LABELS = ("entailment", "neutral", "contradiction")
MNLI_TRAIN_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
QQP_HEADER = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]


def _mnli_pair(rng: random.Random, subjects: list[str], objects: list[str], fronted: bool) -> tuple[str, str, str]:
    past, syn, ant, base = rng.choice(VERBS)
    adj, oadj, subj, obj, place = (
        rng.choice(ADJS),
        rng.choice(OBJ_ADJS),
        rng.choice(subjects),
        rng.choice(objects),
        rng.choice(PLACES),
    )
    if fronted:  # the mismatched "genre": place fronted, other nouns
        premise = f"{place.capitalize()}, the {adj} {subj} {past} the {oadj} {obj}."
    else:
        premise = f"The {adj} {subj} {past} the {oadj} {obj} {place}."
    label = rng.choice(MNLI_LABELS)
    if label == "entailment":
        hyp = rng.choice(
            [
                f"The {subj} {past} the {obj}.",
                f"The {adj} {subj} {syn} the {oadj} {obj}.",
                f"Someone {past} the {obj} {place}.",
                f"A {subj} {syn} a {obj}.",
                f'The {obj} was "{past}" by the {subj}.',
            ]
        )
    elif label == "contradiction":
        hyp = rng.choice(
            [
                f"The {subj} did not {base} the {obj}.",
                f"The {adj} {subj} {ant} the {oadj} {obj}.",
                f"Nobody {past} the {obj} {place}.",
                f"The {subj} never {syn} the {obj}.",
                f'The {obj} was "{ant}" by the {subj}.',
            ]
        )
    else:
        extra = rng.choice(EXTRAS)
        hyp = rng.choice(
            [
                f"The {subj} {past} the {obj} {extra}.",
                f"The {adj} {subj} {syn} the {oadj} {obj} {extra}.",
                f"The {subj} wanted to {base} the {obj}.",
                f"The {subj} {past} the {obj} {extra} {place}.",
                f'The "{adj}" {subj} {past} another {obj}.',
            ]
        )
    return premise, hyp, label


def _parse(text: str) -> str:
    return "( " + " ".join(text.replace('"', "").rstrip(".").split()) + " . )"


def write_mnli(out_dir: str | Path, train_size: int, dev_size: int, label_noise: float, seed: int) -> None:
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    genres = {
        "train": ("fiction", False, train_size, MNLI_TRAIN_HEADER),
        "dev_matched": ("fiction", False, dev_size, MNLI_DEV_HEADER),
        "dev_mismatched": ("letters", True, dev_size, MNLI_DEV_HEADER),
    }
    for split, (genre, fronted, n, header) in genres.items():
        lines = ["\t".join(header)]
        for i in range(n):
            premise, hyp, label = _mnli_pair(rng, SUBJECTS, OBJECTS, fronted)
            if rng.random() < label_noise:
                label = rng.choice(MNLI_LABELS)
            annotator_labels = [label] * (len(header) - 11)
            gold = "-" if i % 97 == 13 else label  # annotators disagreed: GLUE writes "-"
            fields = [
                str(i),
                str(1000 + i),
                f"{1000 + i}{label[0]}",
                genre,
                _parse(premise),
                _parse(hyp),
                "(ROOT)",
                "(ROOT)",
                premise,
                hyp,
                *annotator_labels,
                gold,
            ]
            lines.append("\t".join(fields))
        if split == "train":
            lines.append(
                "\t".join(["999999", "1", "1n", genre, "( a )", "( b )", "(ROOT)", "(ROOT)", "A truncated row"])
            )
        with atomic_path(out_dir / f"{split}.tsv") as tmp:
            tmp.write_text("\n".join(lines) + "\n")


QQP_TEMPLATES = [
    "How can I {verb} a {adj} {noun}?",
    "What is the best way to {verb} a {adj} {noun}?",
    "How do you {verb} a {adj} {noun}?",
    "Where can I learn to {verb} a {adj} {noun}?",
    "Is it hard to {verb} a {adj} {noun}?",
]
QQP_VERBS = [
    ("paint", "colour"),
    ("build", "construct"),
    ("buy", "purchase"),
    ("fix", "repair"),
    ("clean", "wash"),
    ("sell", "trade"),
    ("design", "plan"),
    ("move", "carry"),
    ("find", "locate"),
    ("protect", "guard"),
]
QQP_NOUNS = OBJECTS + ["laptop", "bicycle", "website", "garage", "kitchen", "phone", "guitar", "roof", "engine", "sofa"]


def _qqp_pair(rng: random.Random) -> tuple[str, str, int]:
    """Duplicates: another template, the verb or its synonym, same object. Non-duplicates: half
    an unrelated question, half a hard negative (same template family, another noun or verb)."""
    (verb, syn), adj, noun = rng.choice(QQP_VERBS), rng.choice(OBJ_ADJS), rng.choice(QQP_NOUNS)
    t1 = rng.choice(QQP_TEMPLATES)
    q1 = t1.format(verb=verb, adj=adj, noun=noun)
    if rng.random() < 0.37:  # QQP's share of duplicates
        return q1, rng.choice(QQP_TEMPLATES).format(verb=rng.choice([verb, syn]), adj=adj, noun=noun), 1
    if rng.random() < 0.5:
        (v2, _), a2, n2 = rng.choice(QQP_VERBS), rng.choice(OBJ_ADJS), rng.choice(QQP_NOUNS)
        return q1, rng.choice(QQP_TEMPLATES).format(verb=v2, adj=a2, noun=n2), 0
    if rng.random() < 0.5:
        noun = rng.choice([n for n in QQP_NOUNS if n != noun])
    else:
        verb = rng.choice([v for v in QQP_VERBS if v[0] != verb])[0]
    return q1, rng.choice(QQP_TEMPLATES).format(verb=verb, adj=adj, noun=noun), 0


def write_qqp(out_dir: str | Path, train_size: int, dev_size: int, label_noise: float, seed: int) -> None:
    rng = random.Random(seed + 1)
    out_dir = Path(out_dir)
    qid = 0
    for split, n in {"train": train_size, "dev": dev_size}.items():
        lines = ["\t".join(QQP_HEADER)]
        for i in range(n):
            q1, q2, dup = _qqp_pair(rng)
            if rng.random() < label_noise:
                dup = 1 - dup
            lines.append("\t".join([str(i), str(qid), str(qid + 1), q1, q2, str(dup)]))
            qid += 2
        if split == "train":
            lines.append("\t".join(["999999", "1", "2", "A question without a pair?"]))  # short row, as in real QQP
        with atomic_path(out_dir / f"{split}.tsv") as tmp:
            tmp.write_text("\n".join(lines) + "\n")


@dataclass
class SynthesizeGlueSpec:
    """Stage synthesize-glue: the rule sends the config's glue.synthetic block."""

    train_size: int = setting("glue.synthetic.train_size: training pairs")
    dev_size: int = setting("glue.synthetic.dev_size: pairs per dev split")
    label_noise: float = setting("glue.synthetic.label_noise: share of labels drawn at random", default=0.05)
    seed: int = setting("glue.synthetic.seed", default=0)

    def __post_init__(self):
        if not 0 <= self.label_noise <= 1:
            raise ValueError(f"glue.synthetic.label_noise: {self.label_noise} is not between 0 and 1")


def write_synthetic_glue(task: str, out_dir: str | Path, spec: SynthesizeGlueSpec) -> None:
    writers = {"mnli": write_mnli, "qqp": write_qqp}
    if task not in writers:
        raise ValueError(f"no synthetic generator for task {task!r}; known: {sorted(writers)}")
    writers[task](out_dir, spec.train_size, spec.dev_size, spec.label_noise, spec.seed)
