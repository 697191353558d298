"""Translation path below Snakemake: the top-k teacher cache (round trip, resume after a kill
mid-shard, invalidation), generation (stops at the marker, batching), and the vocabulary check
before distillation. Tiny Llamas built from a config, a BPE tokenizer trained here."""

import os

import pytest
import torch
import torch.nn.functional as F
from tiny import DEMO_PROMPT, lm_training, tiny_llama

from kdsweep.core.cache import CacheEntry, open_pointer
from kdsweep.core.io import read_jsonl, write_jsonl
from kdsweep.translation.data import PrepareTranslationSpec, prepare_translation
from kdsweep.translation.generation import generate_translations, load_lm_tokenizer
from kdsweep.translation.models import causal_lm_from_config, load_causal_lm
from kdsweep.translation.prompt import encode_pair, make_prompt
from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl
from kdsweep.translation.teacher import CacheTeacherLMSpec, cache_teacher_topk, read_topk_cache
from kdsweep.translation.tokenizer import train_bpe_tokenizer

CACHE = {
    "top_k": 8,
    "batch_size": 16,
    "shard_size": 30,
    "value_dtype": "float16",
    "targets": "reference",
    "max_new_tokens": 12,
    "chunk_size": 64,
}
MAX_LENGTH = 192


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """Prepared synthetic pairs, a BPE tokenizer and a random tiny Llama teacher saved with it."""
    root = tmp_path_factory.mktemp("lm")
    write_synthetic_europarl(root / "raw", SynthesizeEuroparlSpec(size=160, seed=3))
    spec = PrepareTranslationSpec(source="synthetic", dev_size=20, test_size=20)
    prepare_translation(root / "data", spec, local_dir=root / "raw")
    rows = read_jsonl(root / "data" / "train.jsonl")
    tok = train_bpe_tokenizer([r["source"] for r in rows] + [r["target"] for r in rows], root / "tok", 400)
    teacher = causal_lm_from_config(tiny_llama(2), tok, seed=0)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    return root


def run_cache(lm, data_dir, store, pointer, max_length=MAX_LENGTH, **cache):
    spec = CacheTeacherLMSpec(prompt=DEMO_PROMPT, cache={**CACHE, **cache}, max_length=max_length)
    return cache_teacher_topk(str(lm / "teacher"), str(lm / "teacher"), data_dir, store, pointer, spec)


def test_cache_round_trip_matches_the_teacher(lm, tmp_path):
    manifest = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    rows = read_jsonl(lm / "data" / "train.jsonl")
    assert (
        manifest["num_shards"] == 4 and manifest["examples"] == len(rows) == 120 and manifest["dropped_too_long"] == 0
    )
    assert manifest["bytes_per_token"] == 8 * (2 + 4) + 4 + 4  # fp16 log-probs, int32 indices, fp32 tail and lse
    ids, starts, topk, index = read_topk_cache(open_pointer(tmp_path / "ptr.json"))
    assert index == list(range(120))
    tok = load_lm_tokenizer(str(lm / "teacher"))
    prompt = make_prompt(tok, DEMO_PROMPT)
    model = load_causal_lm(str(lm / "teacher")).eval()
    captured = []
    for i in range(120):
        expected_ids, expected_start = encode_pair(tok, prompt, rows[i]["source"], rows[i]["target"])
        assert ids[i] == expected_ids and starts[i] == expected_start
        with torch.no_grad():  # the rows predicting the response, one example at a time, unpacked
            log_p = model(torch.tensor([ids[i]])).logits[0, starts[i] - 1 : -1].float().log_softmax(-1)
        top = log_p.topk(8, dim=-1)
        captured.append(top.values.exp().sum(-1))
        if i not in (0, 57, 119):
            continue
        logprobs, indices, tail = topk[i]
        assert logprobs.dtype == torch.float16 and indices.dtype == torch.int32
        torch.testing.assert_close(logprobs.float(), top.values, rtol=1e-3, atol=1e-3)
        assert (indices.long() == top.indices).float().mean() > 0.95  # ties at fp16 precision may swap
        outside = log_p.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
        torch.testing.assert_close(tail, outside, rtol=1e-4, atol=1e-5)
    shard = CacheEntry(tmp_path / "store", manifest["key_parts"]).read_shard(0)
    first = len(ids[0]) - starts[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids[0]])).logits[0, starts[0] - 1 : -1].float()
    torch.testing.assert_close(shard["lse"][:first], logits.logsumexp(-1), rtol=1e-5, atol=1e-5)
    assert manifest["mean_captured_mass"] == pytest.approx(torch.cat(captured).mean().item(), abs=1e-3)
    short = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "short.json", max_length=64)
    too_long = sum(len(encode_pair(tok, prompt, r["source"], r["target"])[0]) > 64 for r in rows)
    assert 0 < too_long < 120 and short["dropped_too_long"] == too_long and short["examples"] == 120 - too_long


def test_killed_caching_resumes_at_the_first_missing_shard(lm, tmp_path, monkeypatch):
    calls = []
    real_write = CacheEntry.write_shard

    def killed_during_shard_2(self, index, tensors):
        calls.append(index)
        if index == 2:  # killed while writing: a temporary file is left, no shard-00002
            (self.dir / ".shard-00002.safetensors.tmp-killed").write_bytes(b"partial")
            raise KeyboardInterrupt
        real_write(self, index, tensors)

    monkeypatch.setattr(CacheEntry, "write_shard", killed_during_shard_2)
    with pytest.raises(KeyboardInterrupt):
        run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    assert calls == [0, 1, 2] and not (tmp_path / "ptr.json").exists()
    entry_dir = next((tmp_path / "store").iterdir())
    assert sorted(p.name for p in entry_dir.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not (entry_dir / "manifest.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in entry_dir.glob("shard-*")}

    computed = []
    monkeypatch.setattr(
        CacheEntry,
        "write_shard",
        lambda self, index, tensors: (computed.append(index), real_write(self, index, tensors)),
    )
    resumed = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    assert computed == [2, 3]  # shards 0 and 1 were not recomputed
    assert {n: (entry_dir / n).stat().st_mtime_ns for n in mtimes} == mtimes
    fresh = run_cache(lm, lm / "data", tmp_path / "fresh", tmp_path / "fresh.json")
    assert resumed["key"] == fresh["key"]
    for index in range(4):
        a = CacheEntry(tmp_path / "store", resumed["key_parts"]).read_shard(index)
        b = CacheEntry(tmp_path / "fresh", fresh["key_parts"]).read_shard(index)
        for name in a:
            assert torch.equal(a[name], b[name]), (index, name)


def test_cache_is_reused_unchanged_and_rebuilt_on_changed_input(lm, tmp_path):
    first = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "a.json")
    again = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "b.json")
    assert again["key"] == first["key"] and open_pointer(tmp_path / "b.json").key == first["key"]
    changed = tmp_path / "changed"
    changed.mkdir()
    rows = read_jsonl(lm / "data" / "train.jsonl")
    rows[5]["target"] = "Une autre traduction."
    write_jsonl(changed / "train.jsonl", rows)
    rebuilt = run_cache(lm, changed, tmp_path / "store", tmp_path / "c.json")
    assert rebuilt["key"] != first["key"] and rebuilt["key_parts"]["data"] != first["key_parts"]["data"]
    other_k = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "d.json", top_k=4)
    assert other_k["key"] not in (first["key"], rebuilt["key"]) and other_k["bytes_per_token"] == 4 * 6 + 8
    assert len(list((tmp_path / "store").iterdir())) == 3


def biased_teacher(lm, token: str):
    """The tiny teacher made to always predict `token` (a large bias on the output layer)."""
    tok = load_lm_tokenizer(str(lm / "teacher"))
    model = load_causal_lm(str(lm / "teacher"))
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    head.bias.data[tok.convert_tokens_to_ids(token)] = 1e4
    model.lm_head = head
    return model, tok


def test_generation_records_why_each_output_stopped(lm):
    sources = ["The council adopts the report.", "We support the proposal."]
    model, tok = biased_teacher(lm, "<|end_of_translation|>")
    prompt = make_prompt(tok, DEMO_PROMPT)
    out = generate_translations(model, tok, prompt, sources, batch_size=2, max_new_tokens=10)
    assert out == [{"hypothesis": "", "stop": "marker", "new_tokens": 0}] * 2  # the marker is stripped
    model, tok = biased_teacher(lm, "Le")
    out = generate_translations(model, tok, prompt, sources, batch_size=2, max_new_tokens=6)
    assert out[0] == {"hypothesis": "LeLeLeLeLeLe", "stop": "max_new_tokens", "new_tokens": 6}  # runaway
    # An Instruct model that never saw the marker ends at <|eot_id|>: not a runaway.
    model, tok = biased_teacher(lm, "<|eot_id|>")
    out = generate_translations(model, tok, prompt, sources, batch_size=2, max_new_tokens=6)
    assert out == [{"hypothesis": "", "stop": "eos", "new_tokens": 0}] * 2


def test_batched_left_padded_generation_equals_one_by_one(lm):
    tok = load_lm_tokenizer(str(lm / "teacher"))
    model = load_causal_lm(str(lm / "teacher"))
    prompt = make_prompt(tok, DEMO_PROMPT)
    sources = [r["source"] for r in read_jsonl(lm / "data" / "test.jsonl")[:6]]
    batched = generate_translations(model, tok, prompt, sources, batch_size=6, max_new_tokens=8)
    single = generate_translations(model, tok, prompt, sources, batch_size=1, max_new_tokens=8)
    assert batched == single
    assert len({len(tok(prompt.prefix(s))["input_ids"]) for s in sources}) > 1  # padding was needed


HOSTILE = "The council adopts the report. " * 1500  # a source of many thousand tokens


def prompt_length(tok, prompt, source: str) -> int:
    return len(tok(prompt.prefix(source), add_special_tokens=False)["input_ids"])


@pytest.fixture
def generate_widths(monkeypatch):
    """The prompt widths (tokens, padding included) of every model.generate call of the test."""
    from transformers import LlamaForCausalLM

    widths, original = [], LlamaForCausalLM.generate

    def spy(self, *args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    return widths


def test_generation_never_sees_a_prompt_over_the_limit(lm, generate_widths):
    tok = load_lm_tokenizer(str(lm / "teacher"))
    model = load_causal_lm(str(lm / "teacher"))
    prompt = make_prompt(tok, DEMO_PROMPT)
    normal = [r["source"] for r in read_jsonl(lm / "data" / "test.jsonl")[:4]]
    limit = max(prompt_length(tok, prompt, s) for s in normal)  # the longest normal prompt is kept
    hostile_length = prompt_length(tok, prompt, HOSTILE)
    assert hostile_length > 5000
    sources = [normal[0], HOSTILE, normal[1], normal[2], HOSTILE, normal[3]]
    out = generate_translations(model, tok, prompt, sources, batch_size=3, max_new_tokens=6, max_prompt_tokens=limit)
    dropped = {"hypothesis": None, "stop": "prompt_too_long", "new_tokens": 0, "prompt_tokens": hostile_length}
    assert out[1] == out[4] == dropped
    assert generate_widths and max(generate_widths) == limit
    generate_widths.clear()
    alone = generate_translations(model, tok, prompt, normal, batch_size=3, max_new_tokens=6)
    assert [out[i] for i in (0, 2, 3, 5)] == alone  # the others are translated as without the hostile rows


@pytest.mark.parametrize("max_length", [192, 64])
def test_evaluation_counts_prompts_over_max_length_or_the_context_and_scores_the_rest(
    lm, tmp_path, generate_widths, max_length
):
    """The tiny Llama's context is 128 positions: with 8 new tokens a prompt may hold 120 tokens
    (max_length 192 is not the bound), with max_length 64 only 64. A 5000+-token source is never
    generated from, a ~90-token one only under the larger limit; BLEU is sacrebleu's on the rest."""
    import sacrebleu

    from kdsweep.translation.evaluate import EvaluateTranslationSpec, evaluate_translation
    from kdsweep.translation.report import translation_row

    tok = load_lm_tokenizer(str(lm / "teacher"))
    prompt = make_prompt(tok, DEMO_PROMPT)
    rows = read_jsonl(lm / "data" / "test.jsonl")[:6]
    assert max(prompt_length(tok, prompt, r["source"]) for r in rows) <= 64
    medium = "The council adopts the report."
    while prompt_length(tok, prompt, medium) <= 80:  # a source between the two limits
        medium += " The council adopts the report."
    assert 80 < prompt_length(tok, prompt, medium) <= 120
    rows[1:1] = [{"id": 900, "source": HOSTILE, "target": "Le conseil adopte le rapport."}]
    rows[4:4] = [{"id": 901, "source": medium, "target": "Le conseil adopte le rapport."}]
    write_jsonl(tmp_path / "data" / "test.jsonl", rows)
    limit, not_scored = (120, {900}) if max_length == 192 else (64, {900, 901})
    eval_cfg = {"batch_size": 3, "max_new_tokens": 8, "num_beams": 1}
    spec = EvaluateTranslationSpec(prompt=DEMO_PROMPT, max_length=max_length, evaluate=eval_cfg)
    result = evaluate_translation(
        str(lm / "teacher"),
        tmp_path / "data",
        tmp_path / "metrics.json",
        tmp_path / "translations.jsonl",
        "teacher",
        spec,
    )
    assert max(generate_widths) <= limit
    outputs = read_jsonl(tmp_path / "translations.jsonl")
    assert [o["id"] for o in outputs] == [r["id"] for r in rows]  # every row kept, in order
    assert {o["id"] for o in outputs if o["stop"] == "prompt_too_long" and o["hypothesis"] is None} == not_scored
    assert (result["examples"], result["scored"], result["dropped_prompt_too_long"]) == (
        8,
        8 - len(not_scored),
        len(not_scored),
    )
    assert result["max_prompt_tokens"] == limit
    scored = [o for o in outputs if o["id"] not in not_scored]
    hyps, refs = [o["hypothesis"] for o in scored], [o["reference"] for o in scored]
    assert result["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert sum(result["stop_rates"].values()) == pytest.approx(1.0)  # shares of the scored outputs
    assert translation_row(result)["Prompt too long (not scored)"] == len(not_scored)


def test_distillation_refuses_a_student_with_another_vocabulary(lm, tmp_path):
    from kdsweep.translation.distill import DistillLMSpec, distill_student_lm

    run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    tok = load_lm_tokenizer(str(lm / "teacher"))
    student = causal_lm_from_config(tiny_llama(1), tok, seed=0)
    student.resize_token_embeddings(len(tok) + 8)
    student.save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    spec = {
        "point": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 1.0},
        "distill": {"loss": "forward_kl", "chunk_size": 64, "training": {}},
        "prompt": DEMO_PROMPT,
        "max_length": MAX_LENGTH,
        "packing": True,
        "eval_batch_size": 8,
    }
    with pytest.raises(ValueError, match=f"teacher vocab_size {len(tok)}, student vocab_size {len(tok) + 8}"):
        distill_student_lm(
            str(tmp_path / "student"),
            str(lm / "teacher"),
            lm / "data",
            tmp_path / "ptr.json",
            tmp_path / "out",
            tmp_path / "log.jsonl",
            tmp_path / "ckpt",
            DistillLMSpec(**spec),
        )
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "ckpt")


def test_sequence_level_kd_caches_the_teacher_translations(lm, tmp_path):
    manifest = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "p.json", targets="teacher")
    assert manifest["key_parts"]["targets"] == "teacher" and manifest["key_parts"]["max_new_tokens"] == 12
    ids, starts, _, _ = read_topk_cache(open_pointer(tmp_path / "p.json"))
    tok = load_lm_tokenizer(str(lm / "teacher"))
    prompt = make_prompt(tok, DEMO_PROMPT)
    rows = read_jsonl(lm / "data" / "train.jsonl")
    teacher_out = generate_translations(
        load_causal_lm(str(lm / "teacher")), tok, prompt, [r["source"] for r in rows[:3]], max_new_tokens=12
    )
    for i in range(3):
        expected, start = encode_pair(tok, prompt, rows[i]["source"], teacher_out[i]["hypothesis"])
        assert ids[i] == expected and starts[i] == start
        assert tok.decode(ids[i][start:]).endswith("<|end_of_translation|><|eot_id|>")


def test_init_student_builds_from_layers_or_config_and_checks_the_vocabulary(lm, tmp_path):
    from kdsweep.translation.distill import InitStudentLMSpec, init_student_lm

    teacher = str(lm / "teacher")
    init_student_lm(teacher, teacher, tmp_path / "layers", InitStudentLMSpec({"from_teacher": {"layers": [1]}}, seed=0))
    student = load_causal_lm(str(tmp_path / "layers"))
    source = load_causal_lm(teacher)
    assert student.config.num_hidden_layers == 1
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, source.model.layers[1].mlp.up_proj.weight)
    init_student_lm(teacher, teacher, tmp_path / "config", InitStudentLMSpec(tiny_llama(1), seed=0))
    assert load_causal_lm(str(tmp_path / "config")).config.vocab_size == source.config.vocab_size
    rows = read_jsonl(lm / "data" / "train.jsonl")
    train_bpe_tokenizer([r["source"] for r in rows], tmp_path / "other_tok", 350)
    with pytest.raises(ValueError, match=f"teacher vocab_size {source.config.vocab_size}, student vocab_size 350"):
        init_student_lm(
            teacher, str(tmp_path / "other_tok"), tmp_path / "bad", InitStudentLMSpec(tiny_llama(1), seed=0)
        )
    assert not (tmp_path / "bad").exists()


def test_self_distillation_through_the_cache_is_aligned(lm, tmp_path):
    """Student = teacher, k = V, T = 1: the per-token forward KL through the real cache and the
    trainer's response rows is ~0; the same cache rows shifted by one position give a large KL.
    (A teacher with a wide initialization, so each position's distribution is its own.)"""
    from kdsweep.core.trainer import DistillTrainer, training_arguments
    from kdsweep.translation.batching import TranslationCollator, TranslationExamples
    from kdsweep.translation.loss import TokenKD
    from kdsweep.translation.teacher import read_topk_cache

    tok = load_lm_tokenizer(str(lm / "teacher"))
    teacher = causal_lm_from_config(tiny_llama(2, initializer_range=0.3), tok, seed=1)
    teacher.save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    vocab = teacher.config.vocab_size
    spec = CacheTeacherLMSpec(prompt=DEMO_PROMPT, cache={**CACHE, "top_k": vocab}, max_length=MAX_LENGTH)
    wide = str(tmp_path / "wide")
    cache_teacher_topk(wide, wide, lm / "data", tmp_path / "store", tmp_path / "ptr.json", spec)
    ids, starts, topk, _ = read_topk_cache(open_pointer(tmp_path / "ptr.json"))
    assert topk[0][0].shape[-1] == vocab
    shifted = [tuple(torch.cat([t[1:], t[:1]]) for t in rows) for rows in topk]
    cfg = lm_training()
    kl = {}
    for name, rows in (("aligned", topk), ("shifted", shifted)):
        data = TranslationExamples(ids, starts, rows)
        trainer = DistillTrainer(
            model=load_causal_lm(str(tmp_path / "wide")),
            args=training_arguments(cfg, 1e-3, tmp_path / name),
            train_dataset=data,
            eval_dataset=data,
            data_collator=TranslationCollator(tok.pad_token_id, MAX_LENGTH),
            loss=TokenKD(
                alpha=1.0,
                temperature=1.0,
            ),
        )
        batch = trainer.data_collator([data[i] for i in range(16)])
        with torch.no_grad():
            _, parts, count, _ = trainer.loss_terms(trainer.model, batch)
            # The student's CE, computed here example by example (no packing): the logits at
            # positions start-1 .. L-2 predict the response tokens start .. L-1.
            ce = sum(
                F.cross_entropy(
                    trainer.model(torch.tensor([ids[i]])).logits[0, starts[i] - 1 : -1],
                    torch.tensor(ids[i][starts[i] :]),
                    reduction="sum",
                )
                for i in range(16)
            )
        assert count == sum(len(ids[i]) - starts[i] for i in range(16))
        assert parts["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
        kl[name] = parts["kd"].item() / count
    assert abs(kl["aligned"]) < 1e-3, kl  # fp16 log-probabilities: ~1e-5
    assert kl["shifted"] > 0.5, kl


def test_the_student_tokenization_is_checked_against_the_cache(lm, tmp_path):
    from kdsweep.translation.teacher import check_cache_alignment

    run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    entry = open_pointer(tmp_path / "ptr.json")
    tok = load_lm_tokenizer(str(lm / "teacher"))
    rows = read_jsonl(lm / "data" / "train.jsonl")
    check_cache_alignment(entry, rows, tok, make_prompt(tok, DEMO_PROMPT))  # the cache's own tokenization
    shifted = make_prompt(tok, {**DEMO_PROMPT, "template": "<|begin_of_text|>" + DEMO_PROMPT["template"]})
    with pytest.raises(RuntimeError, match=r"shard-00000.safetensors: training example 0 .* other prompt ids"):
        check_cache_alignment(entry, rows, tok, shifted)  # a one-token shift: same counts elsewhere
    edited = [dict(r) for r in rows]
    edited[37]["target"] = edited[37]["target"].replace(" ", "  ", 1) + " Oui"
    with pytest.raises(RuntimeError, match=r"shard-00001.safetensors: training example 37 .* other response ids"):
        check_cache_alignment(entry, edited, tok, make_prompt(tok, DEMO_PROMPT))
    check_cache_alignment(entry, edited, tok, make_prompt(tok, DEMO_PROMPT), check_responses=False)  # targets: teacher


def test_a_teacher_giving_non_finite_values_is_not_cached(lm, tmp_path):
    model = load_causal_lm(str(lm / "teacher"))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "broken")
    load_lm_tokenizer(str(lm / "teacher")).save_pretrained(tmp_path / "broken")
    with pytest.raises(
        RuntimeError, match=r"cache shard 1/4: the teacher gave non-finite topk_logprobs on training examples 0..29"
    ):
        broken, spec = str(tmp_path / "broken"), CacheTeacherLMSpec(DEMO_PROMPT, CACHE, MAX_LENGTH)
        cache_teacher_topk(broken, broken, lm / "data", tmp_path / "store", tmp_path / "ptr.json", spec)
    assert not list((tmp_path / "store").glob("*/shard-*")) and not (tmp_path / "ptr.json").exists()


def distill_spec(max_length: int) -> dict:
    """A distill_lm job's spec, as the rule passes it."""
    return {
        "point": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 1.0},
        "distill": {"loss": "forward_kl", "tail": "ignore", "chunk_size": 64, "ce_only_tokens": [],
                    "training": lm_training()},
        "prompt": DEMO_PROMPT, "max_length": max_length, "packing": True, "eval_batch_size": 8,
    }  # fmt: skip


def _truncate(path, entry, index):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _flip_a_byte(path, entry, index):
    data = bytearray(path.read_bytes())
    data[len(data) - 1000] ^= 0x40  # inside the tensors' data, past the header
    path.write_bytes(bytes(data))


def _nan_logprob(path, entry, index):  # a writer's bug: the checksums match the NaN
    shard = entry.read_shard(index)
    shard["topk_logprobs"][5, 0] = float("nan")
    entry.write_shard(index, shard)


def _index_outside_the_vocabulary(path, entry, index):
    shard = entry.read_shard(index)
    shard["topk_indices"][3, 2] = entry.manifest()["teacher_vocab_size"] + 5
    entry.write_shard(index, shard)


DAMAGE = {
    "truncated": (_truncate, "unreadable"),
    "flipped byte": (_flip_a_byte, r"tensor '\w+' fails its checksum"),
    "NaN": (_nan_logprob, r"non-finite top-k log-probabilities in 1 of \d+ token rows \(the first: row 5\)"),
    "index out of range": (_index_outside_the_vocabulary, r"topk_indices holds \d+, outside the teacher's vocabulary"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_refused_before_training_and_rebuilt_by_its_rule(lm, tmp_path, damage):
    from kdsweep.core.cache import CacheDamaged
    from kdsweep.translation.distill import DistillLMSpec, distill_student_lm

    run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    entry = open_pointer(tmp_path / "ptr.json")
    good = {i: entry.shard_path(i).read_bytes() for i in range(4)}
    damage_shard, message = DAMAGE[damage]
    damage_shard(entry.shard_path(1), entry, 1)
    spec = distill_spec(MAX_LENGTH)
    expected = rf"{entry.shard_path(1)}: {message}.*snakemake --forcerun cache_teacher_lm"
    with pytest.raises(CacheDamaged, match=expected):
        distill_student_lm(
            str(lm / "teacher"), str(lm / "teacher"), lm / "data", tmp_path / "ptr.json",
            tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "ckpt", DistillLMSpec(**spec),
        )  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()  # refused before training

    # Forcing the cache rule (Snakemake deletes its pointer and reruns it): only shard 1 is
    # recomputed, and the entry is again what was first built.
    (tmp_path / "ptr.json").unlink()
    mtimes = {i: entry.shard_path(i).stat().st_mtime_ns for i in (0, 2, 3)}
    again = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    assert again["key"] == entry.key and open_pointer(tmp_path / "ptr.json").key == entry.key
    assert {i: entry.shard_path(i).stat().st_mtime_ns for i in (0, 2, 3)} == mtimes
    assert {i: entry.shard_path(i).read_bytes() for i in range(4)} == good


# A translation.max_length that leaves no pair: every stage fails before its work, naming the key
# and the file (torch would say num_samples=0, or a cache would hold no example).
NO_PAIR_FITS = 6  # shorter than the demo prompt itself


def test_teacher_training_fails_when_max_length_leaves_no_pair(lm, tmp_path):
    from kdsweep.translation.teacher import TeacherLMSpec, train_teacher_lm

    with pytest.raises(ValueError) as err:
        train_teacher_lm(
            str(lm / "teacher"), lm / "data", tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "ckpt",
            TeacherLMSpec(
                model=tiny_llama(1), finetune={"learning_rate": 1e-3, "training": lm_training(max_steps=1)},
                prompt=DEMO_PROMPT, max_length=NO_PAIR_FITS,
            ),
        )  # fmt: skip
    tok = load_lm_tokenizer(str(lm / "teacher"))
    prompt = make_prompt(tok, DEMO_PROMPT)
    lengths = [len(encode_pair(tok, prompt, r["source"], r["target"])[0]) for r in read_jsonl(lm / "data/train.jsonl")]
    assert str(err.value) == (
        f"translation.max_length: {NO_PAIR_FITS} tokens leaves no pair of {lm / 'data/train.jsonl'}: all its 120 "
        f"pairs are longer, rendered with the prompt (the shortest {min(lengths)} tokens, the longest "
        f"{max(lengths)}); raise translation.max_length"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    "targets, what", [("reference", "pairs"), ("teacher", r"prompts \(with an empty translation\)")]
)
def test_caching_fails_when_max_length_leaves_no_pair(lm, tmp_path, targets, what):
    expected = rf"^translation\.max_length: {NO_PAIR_FITS} tokens leaves no pair of .*train\.jsonl: all its 120 {what}"
    with pytest.raises(ValueError, match=expected):
        run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "p.json", max_length=NO_PAIR_FITS, targets=targets)
    assert not (tmp_path / "store").exists() and not (tmp_path / "p.json").exists()


def test_distillation_fails_when_max_length_leaves_no_dev_pair(lm, tmp_path):
    from kdsweep.translation.distill import DistillLMSpec, distill_student_lm

    run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    spec = distill_spec(NO_PAIR_FITS)
    with pytest.raises(ValueError, match=rf"^translation\.max_length: {NO_PAIR_FITS} tokens .* of .*dev\.jsonl: all"):
        distill_student_lm(
            str(lm / "teacher"), str(lm / "teacher"), lm / "data", tmp_path / "ptr.json",
            tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "ckpt", DistillLMSpec(**spec),
        )  # fmt: skip
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()
