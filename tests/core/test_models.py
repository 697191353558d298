import pytest
import torch

from kdsweep.core.models import (
    default_layer_map,
    load_tokenizer,
    model_fingerprint,
    student_from_teacher,
    tokenizer_fingerprint,
)
from kdsweep.glue.models import load_classifier


def test_default_layer_map_is_every_other_layer():
    assert default_layer_map(12) == [0, 2, 4, 6, 8, 10]  # DistilBERT
    assert default_layer_map(4) == [0, 2]


@pytest.mark.parametrize("layers", [None, [1, 3], [3]])
def test_student_layers_are_copies_of_the_mapped_teacher_layers(teacher_dir, layers):
    teacher = load_classifier(str(teacher_dir), 3)
    student = student_from_teacher(teacher, layers)
    expected_map = layers if layers is not None else [0, 2]
    assert student.config.num_hidden_layers == len(expected_map)
    for i, t_layer in enumerate(expected_map):
        s_params = dict(student.bert.encoder.layer[i].named_parameters())
        t_params = dict(teacher.bert.encoder.layer[t_layer].named_parameters())
        assert s_params.keys() == t_params.keys()
        for name in s_params:
            assert torch.equal(s_params[name], t_params[name]), (i, name)
    for name, p in student.bert.embeddings.named_parameters():
        assert torch.equal(p, dict(teacher.bert.embeddings.named_parameters())[name])
    # A fresh task head by default; copies are independent tensors.
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)
    student.bert.embeddings.word_embeddings.weight.data.add_(1.0)
    assert not torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )


def test_copy_head_copies_pooler_and_classifier(teacher_dir):
    teacher = load_classifier(str(teacher_dir), 3)
    student = student_from_teacher(teacher, [0], copy_head=True)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight)


def test_layer_out_of_range_names_the_key(teacher_dir):
    teacher = load_classifier(str(teacher_dir), 3)
    with pytest.raises(ValueError, match=r"from_teacher.layers: \[7\] out of range, the teacher has 4 layers"):
        student_from_teacher(teacher, [0, 7])


def test_fingerprints_follow_content_not_location(teacher_dir, tmp_path):
    model = load_classifier(str(teacher_dir), 3)
    copy_dir = tmp_path / "copy"
    model.save_pretrained(copy_dir)
    assert model_fingerprint(load_classifier(str(copy_dir), 3)) == model_fingerprint(model)
    with torch.no_grad():
        model.classifier.bias[0] += 1e-3
    assert model_fingerprint(model) != model_fingerprint(load_classifier(str(copy_dir), 3))
    tok = load_tokenizer(str(teacher_dir))
    tok.save_pretrained(tmp_path / "tok")
    assert tokenizer_fingerprint(load_tokenizer(str(tmp_path / "tok"))) == tokenizer_fingerprint(tok)
    tok.add_tokens(["newword"])
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(load_tokenizer(str(tmp_path / "tok")))


def test_loaders_name_the_damaged_file_of_a_local_folder(tmp_path):
    """A folder kdsweep wrote in an earlier job (a distilled student, say), damaged since: the
    loader says which file is wrong before transformers reads it."""
    from tiny import tiny_llama

    from kdsweep.core.integrity import ModelFolderError
    from kdsweep.core.models import load_tokenizer
    from kdsweep.translation.models import causal_lm_from_config, load_causal_lm
    from kdsweep.translation.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["le chat", "the cat", "un chien", "a dog"] * 20, tmp_path / "m", 300)
    causal_lm_from_config(tiny_llama(1), tok, seed=0).save_pretrained(tmp_path / "m")
    load_causal_lm(str(tmp_path / "m"))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(ModelFolderError, match=rf"model: local folder {tmp_path / 'm'}: model\.safetensors: \d+ bytes"):
        load_causal_lm(str(tmp_path / "m"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match=r"tokenizer: local folder .*empty: empty"):
        load_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(ModelFolderError, match=r"model: local folder /no/such/student: does not exist"):
        load_causal_lm("/no/such/student")


TEXTS = ["The cat sat on the mat.", "A dog, a cat; the END!", "Dogs and cats are pets", "the the cat"] * 3


def test_wordpiece_training_gives_the_same_files_in_every_process(tmp_path):
    """Two trainings on the same text, in separate processes (hash maps seeded differently),
    write byte-identical tokenizer files (the tokenizers library's own WordPiece trainer did not:
    its vocabulary changed from run to run, and with it the demo's GLUE tables)."""
    import subprocess
    import sys

    code = (
        "import sys; from kdsweep.glue.tokenizer import train_wordpiece_tokenizer; "
        f"train_wordpiece_tokenizer({TEXTS!r} * 5, sys.argv[1], 40)"
    )
    for run in ("a", "b", "c"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], check=True, capture_output=True)
    files = [(tmp_path / run / "tokenizer.json").read_bytes() for run in ("a", "b", "c")]
    assert files[0] == files[1] == files[2]


def test_wordpiece_vocabulary_and_encoding(tmp_path):
    """Specials, then every character (word start and ##continuation), then words by count (ties
    alphabetical) up to vocab_size; an unseen word of training characters is spelled with them,
    never [UNK]."""
    from kdsweep.glue.tokenizer import train_wordpiece_tokenizer, wordpiece_vocab

    vocab = wordpiece_vocab(
        ["b", "cab", "ab", "cab", "ab", "dd"], 5 + 8 + 2, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    assert vocab[5:] == ["a", "b", "c", "d", "##a", "##b", "##c", "##d", "ab", "cab"]
    tok = train_wordpiece_tokenizer(TEXTS, tmp_path / "tok", 100)
    assert tok.tokenize("The cat sat") == ["the", "cat", "sat"]
    assert tok.tokenize("tac") == ["t", "##a", "##c"] and tok.unk_token_id not in tok("cot dag")["input_ids"]
    assert (
        tok("a cat", "the dog")["input_ids"][0] == tok.cls_token_id
        and tok.decode(tok("the cat")["input_ids"], skip_special_tokens=True) == "the cat"
    )
