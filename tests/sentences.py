"""Six English sentences, French translations of them and French references: the metric tests' data
(BLEU and chrF in the main environment, COMET in its own: both import this file from tests/)."""

SOURCES = [
    "The cat is sleeping on the sofa.",
    "We will meet tomorrow at the station.",
    "This book was written in 1850.",
    "She has never seen the sea.",
    "The weather is nice today.",
    "Could you close the window, please?",
]
HYPOTHESES = [
    "Le chat dort sur le canapé.",
    "Nous nous verrons demain à la gare.",
    "Ce livre a été écrit en 1850.",
    "Elle n'a jamais vu la mer.",
    "Il fait beau aujourd'hui.",
    "Pourriez-vous fermer la fenêtre ?",
]
REFERENCES = [
    "Le chat dort sur le canapé.",
    "Nous nous retrouverons demain à la gare.",
    "Ce livre fut écrit en 1850.",
    "Elle n'a encore jamais vu la mer.",
    "Il fait beau temps aujourd'hui.",
    "Pouvez-vous fermer la fenêtre, s'il vous plaît ?",
]


def noisy(references: list[str], keep: float, rng) -> list[str]:
    """A system that gets each reference word right with probability `keep` (else a wrong word)."""
    return [" ".join(w if rng.random() < keep else "xyz" for w in r.split()) for r in references]


def corpus_references(n: int, rng) -> list[str]:
    words = "le la les un une chat chien maison rouge bleu petit grand mange dort court ici".split()
    return [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n)]
