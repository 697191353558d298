"""Synthetic English->French parliament sentences for the translation demo and the tests, written
in Europarl's distributed layout (<stem>.en and <stem>.fr, one sentence per line, line-aligned) so
that the real parser (prepare_translation.read_europarl) reads it.

A small rule-based grammar: noun phrases (determiner, optional adjective, noun, optional "of" noun
phrase), clauses (subject, present-tense verb, objects, optional prepositional phrase), negation
and "and" coordination. The French side follows regular rules a model has to learn: gender and
plural forms, adjectives after the noun agreeing with it, verb agreement (3rd person singular and
plural, "nous"), elision (l', n', d', cet), ne ... pas (with "de" for "un/une" after it), and the
contractions du/des/au/aux.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kdsweep.core.io import atomic_path
from kdsweep.core.spec import setting

# "english=french" entries, separated by ";" or newlines.
_FEMININE_NOUNS = """
commission=commission; proposal=proposition; resolution=résolution; directive=directive; policy=politique
reform=réforme; decision=décision; question=question; strategy=stratégie; procedure=procédure
presidency=présidence; delegation=délégation; measure=mesure; initiative=initiative; legislation=législation
position=position; situation=situation; crisis=crise; region=région; border=frontière; company=entreprise
university=université; economy=économie; industry=industrie; bank=banque; law=loi; rule=règle
condition=condition; priority=priorité; solution=solution; answer=réponse; declaration=déclaration
election=élection; institution=institution; organisation=organisation; authority=autorité; agency=agence
conference=conférence; session=session; cooperation=coopération; convention=convention
constitution=constitution; charter=charte; freedom=liberté; security=sécurité; democracy=démocratie
majority=majorité; minority=minorité; opinion=opinion; evaluation=évaluation; inquiry=enquête
hearing=audition; assembly=assemblée; subsidy=subvention; tax=taxe; debt=dette; expenditure=dépense
resource=ressource; city=ville; school=école; family=famille; woman=femme; victim=victime; road=route
zone=zone; factory=usine; recommendation=recommandation; communication=communication
consultation=consultation; negotiation=négociation; army=armée; prison=prison
"""
_MASCULINE_NOUNS = """
council=conseil; parliament=parlement; report=rapport; budget=budget; member state=État membre
citizen=citoyen; amendment=amendement; regulation=règlement; treaty=traité; agreement=accord
programme=programme; project=projet; debate=débat; vote=vote; government=gouvernement; minister=ministre
president=président; rapporteur=rapporteur; group=groupe; committee=comité; market=marché; sector=secteur
fund=fonds; objective=objectif; principle=principe; right=droit; problem=problème; country=pays
worker=travailleur; farmer=agriculteur; consumer=consommateur; producer=producteur; fisherman=pêcheur
child=enfant; job=emploi; wage=salaire; system=système; service=service; document=document; text=texte
article=article; paragraph=paragraphe; chapter=chapitre; compromise=compromis; dialogue=dialogue
partner=partenaire; neighbour=voisin; partnership=partenariat; environment=environnement; trade=commerce
court=tribunal; hospital=hôpital; newspaper=journal; office=bureau; network=réseau; level=niveau
territory=territoire; product=produit; price=prix; cost=coût; income=revenu; investment=investissement
instrument=instrument; mechanism=mécanisme; process=processus; mandate=mandat; timetable=calendrier
deadline=délai; role=rôle; result=résultat; effect=effet; risk=risque; conflict=conflit; summit=sommet
protocol=protocole; contract=contrat; expert=expert; observer=observateur; representative=représentant
candidate=candidat; voter=électeur; judge=juge; doctor=médecin; employer=employeur; port=port
airport=aéroport; village=village
"""
# English and French plurals the spelling rules below do not produce.
_IRREGULAR_PLURALS = {
    "crisis": ("crises", "crises"),
    "member state": ("member states", "États membres"),
    "child": ("children", "enfants"),
    "woman": ("women", "femmes"),
    "fisherman": ("fishermen", "pêcheurs"),
}
# "english=masculine" or "english=masculine/feminine" where the feminine is not masculine + "e".
_ADJECTIVES = """
European=européen/européenne; economic=économique; social=social; political=politique
financial=financier/financière; legal=juridique; public=public/publique; national=national
regional=régional; annual=annuel/annuelle; environmental=environnemental; agricultural=agricole
commercial=commercial; fiscal=fiscal; monetary=monétaire; democratic=démocratique
international=international; current=actuel/actuelle; common=commun; general=général
technical=technique; industrial=industriel/industrielle; digital=numérique; strategic=stratégique
sustainable=durable; necessary=nécessaire; effective=efficace; responsible=responsable
independent=indépendant; urgent=urgent; clear=clair; detailed=détaillé; ambitious=ambitieux/ambitieuse
rural=rural; military=militaire; medical=médical; scientific=scientifique; cultural=culturel/culturelle
judicial=judiciaire; administrative=administratif/administrative; transparent=transparent
fair=équitable; positive=positif/positive; negative=négatif/négative; foreign=étranger/étrangère
legislative=législatif/législative; budgetary=budgétaire; parliamentary=parlementaire
constitutional=constitutionnel/constitutionnelle; institutional=institutionnel/institutionnelle
electoral=électoral; complex=complexe; modern=moderne
"""
# "english=infinitive" for regular -er and -ir verbs, "english=il/ils/nous" forms otherwise.
_VERBS = """
adopt=adopter; approve=approuver; examine=examiner; finance=financer; respect=respecter
improve=améliorer; strengthen=renforcer; present=présenter; accept=accepter; welcome=saluer
criticise=critiquer; prepare=préparer; publish=publier; study=étudier; analyse=analyser
simplify=simplifier; evaluate=évaluer; guarantee=garantir; discuss=discuter; sign=signer
ratify=ratifier; apply=appliquer; monitor=surveiller; launch=lancer; encourage=encourager
share=partager; demand=exiger; increase=augmenter; limit=limiter; create=créer; choose=choisir
establish=établir; define=définir; condemn=condamner; explain=expliquer; recommend=recommander
propose=proposer; organise=organiser; modify=modifier
reject=rejette/rejettent/rejetons; protect=protège/protègent/protégeons; manage=gère/gèrent/gérons
defend=défend/défendent/défendons; understand=comprend/comprennent/comprenons
receive=reçoit/reçoivent/recevons; reduce=réduit/réduisent/réduisons
promote=promeut/promeuvent/promouvons; recognise=reconnaît/reconnaissent/reconnaissons
prefer=préfère/préfèrent/préférons; consider=considère/considèrent/considérons
support=soutient/soutiennent/soutenons; maintain=maintient/maintiennent/maintenons
obtain=obtient/obtiennent/obtenons; transmit=transmet/transmettent/transmettons
submit=soumet/soumettent/soumettons; send=envoie/envoient/envoyons; open=ouvre/ouvrent/ouvrons
read=lit/lisent/lisons
"""
# Verbs that take "to <recipient>" (French "à").
_DITRANSITIVE = {"present", "transmit", "submit", "send", "explain", "recommend", "propose"}

# English determiner -> (singular, plural) in English, (masculine, feminine, plural) in French.
DETERMINERS_EN = {
    "the": ("the", "the"),
    "a": ("a", None),
    "this": ("this", "these"),
    "our": ("our", "our"),
    "their": ("their", "their"),
}
DETERMINERS_FR = {
    "the": ("le", "la", "les"),
    "a": ("un", "une", None),
    "this": ("ce", "cette", "ces"),
    "our": ("notre", "notre", "nos"),
    "their": ("leur", "leur", "leurs"),
}
PREPOSITIONS = {"of": "de", "to": "à", "in": "dans", "for": "pour", "with": "avec", "on": "sur"}
_CONTRACTIONS = {("de", "le"): "du", ("de", "les"): "des", ("à", "le"): "au", ("à", "les"): "aux"}
_FRENCH_VOWELS = "aeiouyhéèêàâîôû"


@dataclass(frozen=True)
class Noun:
    en: str
    en_plural: str
    fr: str
    fr_plural: str
    feminine: bool


@dataclass(frozen=True)
class Adjective:
    en: str
    fr_masculine: str
    fr_feminine: str

    def fr(self, feminine: bool, plural: bool) -> str:
        word = self.fr_feminine if feminine else self.fr_masculine
        if not plural or word.endswith(("s", "x")):
            return word
        return word[:-2] + "aux" if word.endswith("al") else word + "s"


@dataclass(frozen=True)
class Verb:
    en: str  # base form: "we support", "does not support"
    en_3sg: str
    fr_3sg: str
    fr_3pl: str
    fr_1pl: str

    @property
    def ditransitive(self) -> bool:
        return self.en in _DITRANSITIVE


@dataclass(frozen=True)
class NounPhrase:
    det: str  # a key of DETERMINERS_EN; "this" with plural=True reads "these"
    noun: Noun
    plural: bool = False
    adj: Adjective | None = None
    of: NounPhrase | None = None  # "the report of the committee"


@dataclass(frozen=True)
class Clause:
    subject: str | tuple[NounPhrase, ...]  # "we", or one or more coordinated noun phrases
    verb: Verb
    objects: tuple[NounPhrase, ...]
    negated: bool = False
    pp: tuple[str, NounPhrase] | None = None  # (a key of PREPOSITIONS, noun phrase)


def _entries(table: str) -> list[tuple[str, str]]:
    items = (item.strip() for line in table.strip().splitlines() for item in line.split(";"))
    return [tuple(item.split("=")) for item in items if item]


def _english_plural(word: str) -> str:
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "sh", "ch", "x", "z")) else "s")


def _french_plural(word: str) -> str:
    if word.endswith(("s", "x", "z")):
        return word
    if word.endswith("eau"):
        return word + "x"
    return word[:-2] + "aux" if word.endswith("al") else word + "s"


def _noun(en: str, fr: str, feminine: bool) -> Noun:
    en_plural, fr_plural = _IRREGULAR_PLURALS.get(en, (_english_plural(en), _french_plural(fr)))
    return Noun(en, en_plural, fr, fr_plural, feminine)


def _adjective(en: str, fr: str) -> Adjective:
    masculine, _, feminine = fr.partition("/")
    return Adjective(en, masculine, feminine or (masculine if masculine.endswith("e") else masculine + "e"))


def _french_present(fr: str) -> tuple[str, str, str]:
    """il/ils/nous forms: given as "a/b/c", or derived from a regular -er or -ir infinitive."""
    if "/" in fr:
        return tuple(fr.split("/"))
    stem = fr[:-2]
    if fr.endswith("ir"):
        return stem + "it", stem + "issent", stem + "issons"
    nous_stem = stem + "e" if stem.endswith("g") else stem[:-1] + "ç" if stem.endswith("c") else stem
    return stem + "e", stem + "ent", nous_stem + "ons"


def _verb(en: str, fr: str) -> Verb:
    en_3sg = _english_plural(en)  # the same spelling rule: studies, publishes, approves
    return Verb(en, en_3sg, *_french_present(fr))


NOUNS = {en: _noun(en, fr, True) for en, fr in _entries(_FEMININE_NOUNS)}
NOUNS.update({en: _noun(en, fr, False) for en, fr in _entries(_MASCULINE_NOUNS)})
ADJECTIVES = {en: _adjective(en, fr) for en, fr in _entries(_ADJECTIVES)}
VERBS = {en: _verb(en, fr) for en, fr in _entries(_VERBS)}


def _join(words: Sequence[str]) -> str:
    """Join words with spaces, except after an elided word (l', d', n')."""
    text = ""
    for word in words:
        text += word if not text or text.endswith("'") else " " + word
    return text


def _english_np(np: NounPhrase) -> list[str]:
    singular, plural = DETERMINERS_EN[np.det]
    words = [plural if np.plural else singular]
    if np.adj:
        words.append(np.adj.en)
    words.append(np.noun.en_plural if np.plural else np.noun.en)
    following = words[1].lower()
    if words[0] == "a" and following[0] in "aeiou" and not following.startswith(("eu", "uni", "use")):
        words[0] = "an"
    if np.of:
        words += ["of", *_english_np(np.of)]
    return words


def _french_det(np: NounPhrase) -> str:
    masculine, feminine, plural = DETERMINERS_FR[np.det]
    det = plural if np.plural else feminine if np.noun.feminine else masculine
    if not np.plural and np.noun.fr[0].lower() in _FRENCH_VOWELS:
        det = {"le": "l'", "la": "l'", "ce": "cet"}.get(det, det)
    return det


def _french_np(np: NounPhrase, prep: str | None = None, negated: bool = False) -> list[str]:
    """French noun phrase, after the French preposition `prep` if given (contracted: du, au, d'un).
    The object of a negated verb takes "de" for "un/une": "ne soutient pas de proposition"."""
    det = _french_det(np)
    if negated and np.det == "a":
        words = ["d'" if np.noun.fr[0].lower() in _FRENCH_VOWELS else "de"]
    elif prep is None:
        words = [det]
    elif (prep, det) in _CONTRACTIONS:
        words = [_CONTRACTIONS[prep, det]]
    elif prep == "de" and det[0] in _FRENCH_VOWELS:
        words = ["d'", det]
    else:
        words = [prep, det]
    words.append(np.noun.fr_plural if np.plural else np.noun.fr)
    if np.adj:
        words.append(np.adj.fr(np.noun.feminine, np.plural))
    if np.of:
        words += _french_np(np.of, "de")
    return words


def _coordinated(phrases: Sequence[list[str]], conjunction: str) -> list[str]:
    words = list(phrases[0])
    for phrase in phrases[1:]:
        words += [conjunction, *phrase]
    return words


def _english_clause(clause: Clause) -> list[str]:
    if clause.subject == "we":
        words, singular = ["we"], False
    else:
        words = _coordinated([_english_np(np) for np in clause.subject], "and")
        singular = len(clause.subject) == 1 and not clause.subject[0].plural
    if clause.negated:
        words += ["does" if singular else "do", "not", clause.verb.en]
    else:
        words.append(clause.verb.en_3sg if singular else clause.verb.en)
    words += _coordinated([_english_np(np) for np in clause.objects], "and")
    if clause.pp:
        prep, np = clause.pp
        words += [prep, *_english_np(np)]
    return words


def _french_clause(clause: Clause) -> list[str]:
    if clause.subject == "we":
        words, verb = ["nous"], clause.verb.fr_1pl
    else:
        words = _coordinated([_french_np(np) for np in clause.subject], "et")
        singular = len(clause.subject) == 1 and not clause.subject[0].plural
        verb = clause.verb.fr_3sg if singular else clause.verb.fr_3pl
    if clause.negated:
        words += ["n'" if verb[0] in _FRENCH_VOWELS else "ne", verb, "pas"]
    else:
        words.append(verb)
    words += _coordinated([_french_np(np, negated=clause.negated) for np in clause.objects], "et")
    if clause.pp:
        prep, np = clause.pp
        words += _french_np(np, PREPOSITIONS[prep])
    return words


def _sentence(words: list[str]) -> str:
    text = _join(words)
    return text[0].upper() + text[1:] + "."


def render(clauses: Sequence[Clause]) -> tuple[str, str]:
    """(English, French) sentence for one or more clauses joined by "and"."""
    english = _coordinated([_english_clause(c) for c in clauses], "and")
    french = _coordinated([_french_clause(c) for c in clauses], "et")
    return _sentence(english), _sentence(french)


def _random_np(rng: random.Random, nested: bool = True) -> NounPhrase:
    det = rng.choice(["the", "the", "the", "a", "this", "our", "their"])
    return NounPhrase(
        det=det,
        noun=rng.choice(list(NOUNS.values())),
        plural=det != "a" and rng.random() < 0.4,
        adj=rng.choice(list(ADJECTIVES.values())) if rng.random() < 0.35 else None,
        of=_random_np(rng, nested=False) if nested and rng.random() < 0.2 else None,
    )


def _random_subject(rng: random.Random) -> str | tuple[NounPhrase, ...]:
    roll = rng.random()
    if roll < 0.15:
        return "we"
    if roll < 0.3:
        return _random_np(rng, nested=False), _random_np(rng, nested=False)
    return (_random_np(rng),)


def _random_clause(rng: random.Random) -> Clause:
    subject = _random_subject(rng)
    verb = rng.choice(list(VERBS.values()))
    pp = None
    if verb.ditransitive and rng.random() < 0.6:
        pp = ("to", _random_np(rng, nested=False))
    elif rng.random() < 0.3:
        pp = (rng.choice(["in", "for", "with", "on"]), _random_np(rng, nested=False))
    return Clause(
        subject=subject,
        verb=verb,
        objects=(_random_np(rng),) if rng.random() < 0.85 else (_random_np(rng, False), _random_np(rng, False)),
        negated=rng.random() < 0.3,
        pp=pp,
    )


def random_pair(rng: random.Random, min_words: int = 4, max_words: int = 16) -> tuple[str, str]:
    """One (English, French) sentence pair of min_words to max_words English words."""
    while True:
        clauses = [_random_clause(rng)] + ([_random_clause(rng)] if rng.random() < 0.15 else [])
        english, french = render(clauses)
        if min_words <= len(english.split()) <= max_words:
            return english, french


def synthetic_pairs(size: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [random_pair(rng) for _ in range(size)]


@dataclass
class SynthesizeEuroparlSpec:
    """Stage synthesize-europarl: the translation.synthetic block and the file stem."""

    size: int = setting("translation.synthetic.size: sentence pairs")
    seed: int = setting("translation.synthetic.seed", default=0)
    file_stem: str = setting("translation.file_stem: files <file_stem>.en and .fr", default="europarl-v7.fr-en")


def write_synthetic_europarl(out_dir: str | Path, spec: SynthesizeEuroparlSpec) -> None:
    """Write <out_dir>/<stem>.en and <stem>.fr: `size` line-aligned sentence pairs."""
    pairs = synthetic_pairs(spec.size, spec.seed)
    for lang, side in (("en", 0), ("fr", 1)):
        with atomic_path(Path(out_dir) / f"{spec.file_stem}.{lang}") as tmp:
            tmp.write_text("".join(pair[side] + "\n" for pair in pairs), encoding="utf-8")
