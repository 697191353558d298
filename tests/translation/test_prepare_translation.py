import json

import pytest

from kdsweep.core.data import PrepareError
from kdsweep.translation.data import PrepareTranslationSpec, filter_pairs, prepare_translation, read_europarl
from kdsweep.translation.synthetic import (
    ADJECTIVES,
    NOUNS,
    VERBS,
    Clause,
    NounPhrase,
    SynthesizeEuroparlSpec,
    render,
    synthetic_pairs,
    write_synthetic_europarl,
)

STEM = "europarl-v7.fr-en"


def write_europarl(folder, pairs, en_tail=b"", fr_tail=b""):
    """Write <folder>/<STEM>.en and .fr, one line per pair, plus raw bytes appended to either file."""
    folder.mkdir(parents=True, exist_ok=True)
    en, fr = folder / f"{STEM}.en", folder / f"{STEM}.fr"
    en.write_bytes("".join(s + "\n" for s, _ in pairs).encode() + en_tail)
    fr.write_bytes("".join(t + "\n" for _, t in pairs).encode() + fr_tail)
    return en, fr


def numbered_pairs(n):
    return [(f"Sentence number {i} is here.", f"La phrase numéro {i} est ici.") for i in range(n)]


def test_different_line_counts_name_both_files_and_counts(tmp_path):
    en, fr = write_europarl(tmp_path, numbered_pairs(3), fr_tail=b"Une ligne de trop.\n")
    with pytest.raises(PrepareError) as error:
        read_europarl(en, fr)
    message = str(error.value)
    assert f"{en} has 3 lines" in message and f"{fr} has 4" in message


def test_invalid_utf8_and_empty_sides_are_dropped_and_counted(tmp_path):
    en, fr = write_europarl(
        tmp_path,
        [("Good morning.", "Bonjour."), ("   ", "Vide à gauche."), ("Empty right.", "")],
        en_tail=b"Bad \xff byte.\r\nLast line.\r\n",
        fr_tail="Octet invalide.\nDernière ligne.\n".encode(),
    )
    pairs, stats = read_europarl(en, fr)
    assert pairs == [
        {"id": 1, "source": "Good morning.", "target": "Bonjour."},
        {"id": 5, "source": "Last line.", "target": "Dernière ligne."},  # "\r" stripped, ids are line numbers
    ]
    assert (stats.rows_read, stats.rows_kept) == (5, 2)
    assert dict(stats.dropped) == {"empty_source": 1, "empty_target": 1, "invalid_utf8": 1}
    examples = "\n".join(stats.dropped_examples)
    assert f"{en}:2: empty_source" in examples
    assert f"{fr}:3: empty_target" in examples
    assert f"{en}:4: invalid_utf8" in examples


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_pair(tmp_path):
    pairs = [("The debate is closed.", "Le débat est clos."), ("Thank you.", "Merci."), *numbered_pairs(1)]
    pairs.append(pairs[0])  # line 4 repeats line 1: a duplicate only if the mark is gone from line 1
    en, fr = write_europarl(tmp_path, pairs)
    for path in (en, fr):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    read, stats = read_europarl(en, fr)
    assert read[0] == {"id": 1, "source": "The debate is closed.", "target": "Le débat est clos."}
    assert not any("\ufeff" in p["source"] + p["target"] for p in read)
    assert len(read) == 4 and not stats.dropped
    kept = filter_pairs(read, stats, max_source_words=100, overlong="drop", max_length_ratio=3.0)
    assert [p["id"] for p in kept] == [1, 2, 3] and dict(stats.dropped) == {"duplicate_pair": 1}


def test_a_utf16_file_fails_naming_it(tmp_path):
    en, fr = write_europarl(tmp_path, numbered_pairs(3))
    fr.write_bytes("".join(f"La phrase {i}.\n" for i in range(3)).encode("utf-16"))  # BOM + UTF-16LE
    with pytest.raises(PrepareError, match=f"{fr}:1: starts with a UTF-16 byte-order mark"):
        read_europarl(en, fr)


def test_no_trailing_newline_keeps_the_last_row(tmp_path):
    en, fr = tmp_path / "a.en", tmp_path / "a.fr"
    en.write_text("One.\nTwo.")
    fr.write_text("Un.\nDeux.")
    pairs, _ = read_europarl(en, fr)
    assert [p["target"] for p in pairs] == ["Un.", "Deux."]


def prepare(tmp_path, pairs, **kwargs):
    write_europarl(tmp_path / "raw", pairs)
    settings = {"dev_size": 1, "test_size": 1, **kwargs}
    return prepare_translation(
        tmp_path / "out", PrepareTranslationSpec(source="local", **settings), local_dir=tmp_path / "raw"
    )


def read_split(tmp_path, split):
    return [json.loads(line) for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]


def test_length_ratio_outliers_are_dropped(tmp_path):
    pairs = numbered_pairs(4) + [
        ("Yes.", "Oui, absolument, nous sommes tout à fait d'accord."),
        ("A long sentence.", "Non."),
    ]
    manifest = prepare(tmp_path, pairs, max_length_ratio=3.0)
    assert manifest["pool"]["dropped_by_reason"] == {"length_ratio": 2}
    assert manifest["pool"]["rows_kept"] == 4
    assert sum(s["rows_written"] for s in manifest["splits"].values()) == 4


def test_overlong_sources_are_dropped_never_truncated(tmp_path):
    long_pair = ("one two three four five six seven", "un deux trois quatre cinq six sept")
    pairs = numbered_pairs(3) + [long_pair]
    dropped = prepare(tmp_path / "drop", pairs, max_source_words=5)
    assert dropped["pool"]["dropped_by_reason"] == {"source_too_long": 1}
    rows = [row for split in ("train", "dev", "test") for row in read_split(tmp_path / "drop", split)]
    assert len(rows) == 3 and all(len(r["source"].split()) <= 5 for r in rows)
    # A cut source would keep its whole target: no longer a translation pair.
    with pytest.raises(PrepareError, match="a truncated source no longer matches its whole target"):
        prepare(tmp_path / "truncate", pairs, max_source_words=5, overlong="truncate")


def test_repeated_sources_are_dropped_before_splitting(tmp_path):
    """Europarl repeats sentences: no source may be in two splits, whatever the seed."""
    repeated = [
        ("The debate is closed.", "Le débat est clos."),
        ("The vote will take place tomorrow.", "Le vote aura lieu demain."),
    ]
    pairs = numbered_pairs(12) + repeated * 4 + [("The  debate is closed. ", "Le débat est terminé.")]
    manifest = prepare(tmp_path, pairs, train_size=None, dev_size=3, test_size=3, subset_seed=0)
    assert manifest["pool"]["dropped_by_reason"] == {"duplicate_pair": 6, "duplicate_source": 1}
    assert manifest["pool"]["rows_kept"] == 14
    sources = {
        split: [" ".join(r["source"].split()) for r in read_split(tmp_path, split)]
        for split in ("train", "dev", "test")
    }
    assert sum(len(v) for v in sources.values()) == 14
    for split, values in sources.items():
        assert len(set(values)) == len(values), split
    train, dev, test = (set(v) for v in sources.values())
    assert not (train & dev or train & test or dev & test)
    assert "first at 13" in " ".join(manifest["pool"]["dropped_examples"])  # where the kept copy is


def test_splits_are_deterministic_disjoint_and_sized(tmp_path):
    pairs = numbered_pairs(40)
    ids = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        manifest = prepare(tmp_path / name, pairs, train_size=20, dev_size=5, test_size=7, subset_seed=seed)
        assert {s: e["rows_written"] for s, e in manifest["splits"].items()} == {"train": 20, "dev": 5, "test": 7}
        ids[name] = {s: [r["id"] for r in read_split(tmp_path / name, s)] for s in ("train", "dev", "test")}
    assert ids["a"] == ids["b"]
    assert ids["a"] != ids["c"]
    train, dev, test = (set(ids["a"][s]) for s in ("train", "dev", "test"))
    assert not (train & dev or train & test or dev & test)
    assert ids["a"]["train"] == sorted(ids["a"]["train"])  # each split keeps the file order
    rest = prepare(tmp_path / "rest", pairs, train_size=None, dev_size=5, test_size=7, subset_seed=1)
    assert rest["splits"]["train"]["rows_written"] == 28


def test_manifest_layout(tmp_path):
    manifest = prepare(tmp_path, numbered_pairs(5) + [("", "Vide.")], subset_seed=3)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert manifest["source"] == "local" and manifest["kdsweep_version"]
    assert manifest["settings"]["seed"] == 3 and manifest["settings"]["max_source_words"] == 128
    assert sorted(manifest["input_files"]) == [str(tmp_path / "raw" / f"{STEM}.{lang}") for lang in ("en", "fr")]
    assert all(len(h) == 64 for h in manifest["input_files"].values())
    for split, entry in manifest["splits"].items():  # what report.py reads
        assert entry["rows_read"] == 6 and entry["dropped_by_reason"] == {"empty_source": 1}
        assert entry["file"] == f"{split}.jsonl"
    assert manifest["splits"]["train"]["rows_written"] == 3


def test_too_few_pairs_fail_with_the_counts(tmp_path):
    with pytest.raises(PrepareError, match=r"2 usable pairs after filtering \(3 read, .*empty_target.*1 \+ 1 \+ 1"):
        prepare(tmp_path, numbered_pairs(2) + [("Alone.", "")])
    assert not (tmp_path / "out").exists()


def test_synthetic_files_go_through_the_real_parser(tmp_path):
    write_synthetic_europarl(tmp_path / "raw", SynthesizeEuroparlSpec(size=50))
    spec = PrepareTranslationSpec(source="synthetic", dev_size=10, test_size=10)
    manifest = prepare_translation(tmp_path / "out", spec, local_dir=tmp_path / "raw")
    assert manifest["pool"]["rows_read"] == 50 and manifest["pool"]["dropped_by_reason"] == {}
    assert [manifest["splits"][s]["rows_written"] for s in ("train", "dev", "test")] == [30, 10, 10]


def test_synthetic_generator_is_deterministic_and_not_a_copy():
    pairs = synthetic_pairs(3000, seed=0)
    assert pairs == synthetic_pairs(3000, seed=0)
    assert pairs[:50] != synthetic_pairs(50, seed=1)
    english_words = {w for en, _ in pairs for w in en.lower().rstrip(".").split()}
    french_words = {w for _, fr in pairs for w in fr.lower().rstrip(".").split()}
    assert len(english_words) >= 250 and len(french_words) >= 250
    shared = sum(len(set(en.lower().split()) & set(fr.lower().split())) for en, fr in pairs)
    assert shared / sum(len(fr.split()) for _, fr in pairs) < 0.15
    lengths = [len(en.split()) for en, _ in pairs]
    assert min(lengths) >= 4 and max(lengths) <= 16
    assert all(en[0].isupper() and en.endswith(".") and fr[0].isupper() and fr.endswith(".") for en, fr in pairs)


def np(det, noun, plural=False, adj=None, of=None):
    return NounPhrase(det, NOUNS[noun], plural, ADJECTIVES[adj] if adj else None, of)


@pytest.mark.parametrize(
    ("clauses", "expected"),
    [
        (  # feminine agreement, negation with "de" for "a"
            [Clause((np("the", "commission"),), VERBS["support"], (np("a", "proposal", adj="financial"),), True)],
            (
                "The commission does not support a financial proposal.",
                "La commission ne soutient pas de proposition financière.",
            ),
        ),
        (  # plural agreement (-al -> -aux), "we", elided "n'", "cet"
            [Clause("we", VERBS["adopt"], (np("this", "amendment"), np("the", "report", True, "national")), True)],
            (
                "We do not adopt this amendment and the national reports.",
                "Nous n'adoptons pas cet amendement et les rapports nationaux.",
            ),
        ),
        (  # coordinated subject takes the plural verb; contractions du, aux; feminine plural adjective
            [
                Clause(
                    (np("the", "council"), np("our", "citizen")),
                    VERBS["present"],
                    (np("the", "report", of=np("the", "committee")),),
                    pp=("to", np("the", "member state", True, "European")),
                ),
                Clause((np("this", "agency", True, "public"),), VERBS["accept"], (np("the", "budget"),)),
            ],
            (
                "The council and our citizen present the report of the committee to the European member states "
                "and these public agencies accept the budget.",
                "Le conseil et notre citoyen présentent le rapport du comité aux États membres européens "
                "et ces agences publiques acceptent le budget.",
            ),
        ),
        (  # l' before a vowel, d'une, "an"
            [Clause((np("the", "assembly"),), VERBS["examine"], (np("a", "agreement", of=np("a", "region")),))],
            ("The assembly examines an agreement of a region.", "L'assemblée examine un accord d'une région."),
        ),
    ],
)
def test_rendered_constructions(clauses, expected):
    assert render(clauses) == expected


def test_interrupted_rewrite_leaves_no_manifest(tmp_path, monkeypatch):
    prepare(tmp_path, numbered_pairs(6))
    assert (tmp_path / "out" / "manifest.json").exists()

    def killed(path, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr("kdsweep.translation.data.write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path, numbered_pairs(8))
    assert not (tmp_path / "out" / "manifest.json").exists()  # the old manifest does not vouch for new splits


def test_a_file_in_another_encoding_is_refused_not_thinned(tmp_path):
    """cp1252 French: every accented line is invalid UTF-8. Dropping them would train on the
    accent-free rest; the file is refused, naming it. A UTF-8 file with as many stray bad lines
    among more valid accented ones keeps its rows, the bad ones dropped and counted."""
    pairs = numbered_pairs(30)
    en, fr = write_europarl(tmp_path / "raw", pairs)
    fr.write_bytes("".join(t + "\n" for _, t in pairs).encode("cp1252"))
    with pytest.raises(PrepareError, match=rf"{fr}: 30 of its 30 rows with non-ASCII bytes are not UTF-8.*iconv"):
        read_europarl(en, fr)
    fr.write_bytes("".join(t + "\n" for _, t in pairs[:10]).encode("cp1252") + "".join(
        t + "\n" for _, t in pairs[10:]).encode())  # fmt: skip
    kept, stats = read_europarl(en, fr)
    assert len(kept) == 20 and stats.dropped == {"invalid_utf8": 10}
