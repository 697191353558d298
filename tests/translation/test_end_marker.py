"""The end marker and a teacher never trained on it (the study's Llama-3.2-3B-Instruct never saw
<|end_of_translation|>). Teacher: a tiny Llama trained on the same pairs with a prompt that ends
with <|eot_id|> and no marker, so it gives the marker ~zero probability; student: built from its
layers (like the 1B Instruct student, it has never seen the marker either), distilled with the
marker prompt and pure KD (alpha 1). With the marker (and <|eot_id|>) as ce_only_tokens, those
positions take CE with full weight and the distilled student ends its translations with the
marker; with KD there too it follows the teacher and stops at <|eot_id|> instead."""

from collections import Counter

import pytest
import torch
from tiny import DEMO_PROMPT, lm_training, tiny_llama

from kdsweep.core.io import read_jsonl
from kdsweep.translation.data import PrepareTranslationSpec, prepare_translation
from kdsweep.translation.distill import DistillLMSpec, InitStudentLMSpec, distill_student_lm, init_student_lm
from kdsweep.translation.generation import generate_translations, load_lm_tokenizer
from kdsweep.translation.models import load_causal_lm
from kdsweep.translation.prompt import encode_pair, make_prompt
from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl
from kdsweep.translation.teacher import CacheTeacherLMSpec, TeacherLMSpec, cache_teacher_lm, train_teacher_lm
from kdsweep.translation.tokenizer import train_bpe_tokenizer

pytestmark = pytest.mark.integration
NO_MARKER = {**DEMO_PROMPT, "template": "<|begin_of_text|>English: {source}\nFrench: {target}<|eot_id|>"}
CE_ONLY = ["<|end_of_translation|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def instruct_teacher(tmp_path_factory):
    """Data, tokenizer, a teacher trained without the marker, its top-8 cache with the marker
    prompt, and the base student built from its layers."""
    root = tmp_path_factory.mktemp("marker")
    write_synthetic_europarl(root / "raw", SynthesizeEuroparlSpec(size=200, seed=3))
    spec = PrepareTranslationSpec(source="synthetic", dev_size=20, test_size=20)
    prepare_translation(root / "data", spec, local_dir=root / "raw")
    rows = read_jsonl(root / "data" / "train.jsonl")
    train_bpe_tokenizer([r["source"] for r in rows] + [r["target"] for r in rows], root / "tok", 400)
    model = tiny_llama(2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    steps = {"max_steps": 300, "batch_size": 16, "warmup_ratio": 0.05, "eval_steps": 1000, "save_steps": 1000}
    finetune = {"learning_rate": 3e-3, "training": lm_training(**steps)}
    spec = TeacherLMSpec(model=model, finetune=finetune, prompt=NO_MARKER, max_length=128)
    train_teacher_lm(str(root / "tok"), root / "data", root / "teacher", root / "t.jsonl", root / "tc", spec)
    cache = {"top_k": 8, "batch_size": 32, "shard_size": 1000, "value_dtype": "float16", "targets": "reference"}
    cache |= {"max_new_tokens": 8, "chunk_size": 256}
    teacher = str(root / "teacher")
    spec = CacheTeacherLMSpec(prompt=DEMO_PROMPT, cache=cache, max_length=128)
    cache_teacher_lm(teacher, teacher, root / "data", root / "store", root / "cache.json", spec)
    init_student_lm(teacher, teacher, root / "student", InitStudentLMSpec({"from_teacher": {"layers": [0, 1]}}, seed=0))
    return root


def distill_and_generate(root, name: str, ce_only: list[str]) -> Counter:
    spec = {
        "point": {"learning_rate": 3e-3, "alpha": 1.0, "temperature": 1.0},
        "distill": {
            "loss": "forward_kl",
            "tail": "ignore",
            "chunk_size": 256,
            "ce_only_tokens": ce_only,
            "training": lm_training(max_steps=80, batch_size=16, eval_steps=1000, save_steps=1000),
        },
        "prompt": DEMO_PROMPT,
        "max_length": 128,
        "packing": True,
        "eval_batch_size": 16,
    }
    out = root / name
    distill_student_lm(
        str(root / "student"), str(root / "teacher"), root / "data", root / "cache.json",
        out / "model", out / "log.jsonl", out / "ckpt", DistillLMSpec(**spec),
    )  # fmt: skip
    tok = load_lm_tokenizer(str(out / "model"))
    sources = [r["source"] for r in read_jsonl(root / "data" / "train.jsonl")[:20]]
    outputs = generate_translations(
        load_causal_lm(str(out / "model")), tok, make_prompt(tok, DEMO_PROMPT), sources, max_new_tokens=40
    )
    return Counter(o["stop"] for o in outputs)


def test_the_teacher_gives_the_marker_about_zero_probability(instruct_teacher):
    tok = load_lm_tokenizer(str(instruct_teacher / "teacher"))
    prompt = make_prompt(tok, DEMO_PROMPT)
    model = load_causal_lm(str(instruct_teacher / "teacher")).eval()
    marker = tok.convert_tokens_to_ids(prompt.marker)
    for row in read_jsonl(instruct_teacher / "data" / "train.jsonl")[:10]:
        ids, _ = encode_pair(tok, prompt, row["source"], row["target"])
        at = ids.index(marker)
        with torch.no_grad():
            probs = model(torch.tensor([ids[:at]])).logits[0, -1].softmax(-1)
        assert probs[marker] < 1e-3 and probs.argmax() == tok.convert_tokens_to_ids("<|eot_id|>")


def test_ce_only_marker_positions_keep_the_marker(instruct_teacher):
    with_ce_only = distill_and_generate(instruct_teacher, "ce_only", CE_ONLY)
    assert with_ce_only["marker"] >= 16, with_ce_only  # of 20 training sources
    kd_everywhere = distill_and_generate(instruct_teacher, "kd_everywhere", [])
    assert kd_everywhere["marker"] <= 4 and kd_everywhere["eos"] >= 12, kd_everywhere  # the control
