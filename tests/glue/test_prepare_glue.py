import json

import pytest

from kdsweep.glue.data import GLUE_TASKS, PrepareError, PrepareGlueSpec, parse_glue_tsv, prepare_glue, subset
from kdsweep.glue.synthetic import MNLI_TRAIN_HEADER, QQP_HEADER

LOCAL = PrepareGlueSpec(source="local")

MNLI = GLUE_TASKS["mnli"]
QQP = GLUE_TASKS["qqp"]


def mnli_row(i, s1, s2, gold, label1=None):
    return "\t".join(
        [str(i), "1", f"{i}e", "fiction", "( a )", "( b )", "(ROOT)", "(ROOT)", s1, s2, label1 or gold, gold]
    )


def write(path, lines, encoding_bytes=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data if encoding_bytes is None else data + encoding_bytes)
    return path


def test_mnli_tricky_rows(tmp_path):
    lines = [
        "\t".join(MNLI_TRAIN_HEADER),
        mnli_row(1, 'He said "yes, of course" and left.', "He left.", "entailment"),  # quotes inside a field
        mnli_row(2, '"Unbalanced quote at the start', "Something else.", "neutral"),  # csv quoting would eat lines
        mnli_row(3, "A premise.", "A hypothesis.", "-", label1="neutral"),  # no gold label
        "\t".join(["4", "1", "4e", "fiction", "only", "nine", "fields", "here", "A premise."]),  # short row
        mnli_row(5, "A premise.", "A hypothesis.", "contradiction") + "\textra",  # long row
        mnli_row(6, "A premise.", "A hypothesis.", "maybe"),  # unknown label
        mnli_row(7, "   ", "A hypothesis.", "neutral"),  # empty text
        mnli_row(8, "Last row.", "Without trailing newline.", "contradiction"),
    ]
    path = write(
        tmp_path / "train.tsv", lines, encoding_bytes=b"9\t1\t9e\tx\ta\tb\tc\td\t\xff\xfe bad\tx\tneutral\tneutral"
    )
    rows, stats = parse_glue_tsv(path, MNLI)
    assert [(r["id"], r["label"]) for r in rows] == [("1e", 0), ("2e", 1), ("8e", 2)]
    assert rows[0]["text_a"] == 'He said "yes, of course" and left.'
    assert rows[1]["text_a"] == '"Unbalanced quote at the start'
    assert stats.rows_read == 9 and stats.rows_kept == 3
    assert dict(stats.dropped) == {
        "no gold label ('-')": 1,
        "short row": 1,
        "long row": 1,
        "unknown label": 1,
        "empty text": 1,
        "invalid UTF-8": 1,
    }
    examples = "\n".join(stats.dropped_examples)
    assert f"{path}:4: no gold label" in examples  # file and line named
    assert f"{path}:5: short row (9 fields, header has 12)" in examples
    assert f"{path}:6: long row (13 fields, header has 12)" in examples
    assert f"{path}:10: invalid UTF-8" in examples


def test_a_byte_order_mark_stays_out_of_the_header_and_rows(tmp_path):
    # QQP's first column is its id: with the mark glued to it, "id" would be missing from the header.
    lines = ["\t".join(QQP_HEADER), "17\t1\t2\tHow do I cook rice?\tHow is rice cooked?\t1"]
    path = write(tmp_path / "train.tsv", lines)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    rows, stats = parse_glue_tsv(path, QQP)
    assert rows == [{"id": "17", "text_a": "How do I cook rice?", "text_b": "How is rice cooked?", "label": 1}]
    assert stats.rows_read == 1 and not stats.dropped


def test_a_header_that_is_not_utf8_fails_naming_the_file(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("\t".join(MNLI_TRAIN_HEADER).encode("utf-16") + b"\n")  # UTF-16: BOM ff fe, NULs
    with pytest.raises(PrepareError, match=f"{path}:1: the header is not UTF-8"):
        parse_glue_tsv(path, MNLI)


def test_qqp_rows_and_missing_column(tmp_path):
    path = write(
        tmp_path / "QQP" / "train.tsv",
        [
            "\t".join(QQP_HEADER),
            "1\t1\t2\tHow do I cook rice?\tWhat is the best way to cook rice?\t1",
            "2\t3\t4\tWhy is the sky blue?\n",  # short row (QQP's real train.tsv has some)
            "3\t5\t6\tA question?\tAnother question?\t0",
        ],
    )
    rows, stats = parse_glue_tsv(path, QQP)
    assert [(r["id"], r["label"]) for r in rows] == [("1", 1), ("3", 0)]
    assert stats.dropped == {"short row": 1}
    bad = write(tmp_path / "bad.tsv", ["id\tquestion1\tquestion2", "1\ta\tb"])
    with pytest.raises(PrepareError, match=r"bad.tsv:1: header lacks column\(s\) \['is_duplicate'\]"):
        parse_glue_tsv(bad, QQP)


def test_prepare_writes_splits_and_manifest_counts(tmp_path):
    raw = tmp_path / "MNLI"
    write(
        raw / "train.tsv",
        ["\t".join(MNLI_TRAIN_HEADER)]
        + [
            mnli_row(i, f"P {i}.", f"H {i}.", ["entailment", "neutral", "contradiction", "-"][i % 4]) for i in range(12)
        ],
    )
    dev_header = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
    for split in ("dev_matched", "dev_mismatched"):
        write(
            raw / f"{split}.tsv",
            [
                "\t".join(dev_header),
                "\t".join(
                    [
                        "0",
                        "1",
                        "1e",
                        "g",
                        "a",
                        "b",
                        "c",
                        "d",
                        "P.",
                        "H.",
                        "neutral",
                        "neutral",
                        "neutral",
                        "neutral",
                        "neutral",
                        "neutral",
                    ]
                ),
            ],
        )
    manifest = prepare_glue("mnli", tmp_path / "out", LOCAL, tsv_dir=raw)
    train = manifest["splits"]["train"]
    assert (train["rows_read"], train["rows_written"], train["dropped_by_reason"]) == (
        12,
        9,
        {"no gold label ('-')": 3},
    )
    assert train["label_counts"] == {"entailment": 3, "neutral": 3, "contradiction": 3}
    written = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r["label"] for r in written] == [0, 1, 2] * 3
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert manifest["splits"]["dev_matched"]["rows_written"] == 1


def test_split_empty_after_filtering_fails_naming_the_file(tmp_path):
    raw = tmp_path / "MNLI"
    write(raw / "train.tsv", ["\t".join(MNLI_TRAIN_HEADER), mnli_row(1, "P.", "H.", "-"), mnli_row(2, "P.", "H.", "-")])
    with pytest.raises(
        PrepareError, match=r"train.tsv: no usable rows after filtering \(2 read, dropped: .*no gold label"
    ):
        prepare_glue("mnli", tmp_path / "out", LOCAL, tsv_dir=raw)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_file_is_named(tmp_path):
    with pytest.raises(PrepareError, match=r"QQP/train.tsv: missing"):
        prepare_glue("qqp", tmp_path / "out", LOCAL, tsv_dir=tmp_path / "QQP")


def test_subset_is_deterministic_and_keeps_order():
    rows = [{"i": i} for i in range(100)]
    a, b = subset(rows, 10, seed=3), subset(rows, 10, seed=3)
    assert a == b and len(a) == 10
    assert [r["i"] for r in a] == sorted(r["i"] for r in a)
    assert subset(rows, 10, seed=4) != a
    assert subset(rows, None, seed=0) is rows


def test_synthetic_data_goes_through_the_real_parser(glue_data):
    manifest = json.loads((glue_data["data"] / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "dev_matched", "dev_mismatched"}
    train = manifest["splits"]["train"]
    # The generator plants GLUE's quirks: '-' gold labels and one truncated row.
    assert train["dropped_by_reason"]["short row"] == 1
    assert train["dropped_by_reason"]["no gold label ('-')"] >= 1
    assert train["rows_written"] == 200 - train["dropped_by_reason"]["no gold label ('-')"]
    assert set(train["label_counts"]) == {"entailment", "neutral", "contradiction"}


def test_a_tsv_in_another_encoding_is_refused_not_thinned(tmp_path):
    rows = ["\t".join(QQP_HEADER)] + [f"{i}\t1\t2\tCafé numéro {i} ?\tOù est le café {i} ?\t1" for i in range(12)]
    path = tmp_path / "train.tsv"
    path.write_bytes(("\n".join(rows) + "\n").encode("cp1252"))
    with pytest.raises(PrepareError, match=rf"{path}: 12 of its 12 rows with non-ASCII bytes are not UTF-8"):
        parse_glue_tsv(path, QQP)
    path.write_bytes(("\n".join(rows[:10]) + "\n").encode("cp1252") + ("\n".join(rows[10:]) + "\n").encode())
    kept, stats = parse_glue_tsv(path, QQP)  # 9 bad rows: below the threshold, dropped and counted
    assert len(kept) == 3 and stats.dropped == {"invalid UTF-8": 9}
