"""Translation path below Snakemake: the top-k teacher cache (round trip, resume after a kill
mid-shard, invalidation), generation (stops at the marker, batching), and the vocabulary check
before distillation. Tiny Llamas built from a config, a BPE tokenizer trained here."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from tiny import DEMO_PROMPT, lm_training, tiny_llama

from kdsweep.core import bitpack
from kdsweep.core.cache import CacheEntry, open_pointer
from kdsweep.core.io import read_jsonl, write_jsonl
from kdsweep.translation.data import PrepareTranslationSpec, prepare_translation
from kdsweep.translation.generation import generate_translations, load_lm_tokenizer
from kdsweep.translation.models import causal_lm_from_config, load_causal_lm
from kdsweep.translation.prompt import encode_pair, make_prompt
from kdsweep.translation.synthetic import SynthesizeEuroparlSpec, write_synthetic_europarl
from kdsweep.translation.teacher import CacheTeacherLMSpec, cache_teacher_lm, entry_format, read_cache
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
    return cache_teacher_lm(str(lm / "teacher"), str(lm / "teacher"), data_dir, store, pointer, spec)


def test_cache_round_trip_matches_the_teacher(lm, tmp_path):
    manifest = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    rows = read_jsonl(lm / "data" / "train.jsonl")
    assert (
        manifest["num_shards"] == 4 and manifest["examples"] == len(rows) == 120 and manifest["dropped_too_long"] == 0
    )
    bits = math.ceil(math.log2(manifest["teacher_vocab_size"]))  # each id packed in these bits
    assert manifest["bytes_per_token"] == 8 * 2 + math.ceil(8 * bits / 8) + 4 + 4  # fp16 log-probs, ids, fp32 tail, lse
    ids, starts, topk, index = read_cache(open_pointer(tmp_path / "ptr.json"))
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
        logprobs, indices, tail = (topk[i][k] for k in ("topk_logprobs", "topk_indices", "topk_tail"))
        assert logprobs.dtype == torch.float16
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


SAMPLED = {"method": "sampled", "draws": 12, "temperature": 2.0, "seed": 5}


@pytest.mark.parametrize("method", ["topk", "sampled"])
def test_killed_caching_resumes_at_the_first_missing_shard(lm, tmp_path, monkeypatch, method):
    """Killed while writing shard 3 of 4, the cache resumes there, keeping shards 1-2, and ends
    the same bytes as an uninterrupted build in another store (a sampled cache too: its draws
    are seeded per shard)."""
    settings = SAMPLED if method == "sampled" else {}
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
        run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json", **settings)
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
    resumed = run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json", **settings)
    assert computed == [2, 3]  # shards 0 and 1 were not recomputed
    assert {n: (entry_dir / n).stat().st_mtime_ns for n in mtimes} == mtimes
    fresh = run_cache(lm, lm / "data", tmp_path / "fresh", tmp_path / "fresh.json", **settings)
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
    bits = math.ceil(math.log2(first["teacher_vocab_size"]))
    assert other_k["key"] not in (first["key"], rebuilt["key"])
    assert other_k["bytes_per_token"] == 4 * 2 + math.ceil(4 * bits / 8) + 8
    assert len(list((tmp_path / "store").iterdir())) == 3


def test_a_sampled_cache_draws_from_the_teacher_at_its_temperature_and_seed(lm, tmp_path):
    """The cached draws are the teacher's distribution at the cache's temperature: over every
    response token, the mean log-probability of the drawn ids under p_T equals -H(p_T) (its
    expectation under p_T) within 5 standard errors, and not under p_1 (the control: drawn at the
    wrong temperature); the cached entropy is p_T's. Another seed draws other tokens; bytes per
    token are the packed ids and counts and two fp32 values."""
    tok = load_lm_tokenizer(str(lm / "teacher"))
    teacher = causal_lm_from_config(tiny_llama(2, initializer_range=0.3), tok, seed=1).eval()  # far from uniform
    teacher.save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    wide, spec = str(tmp_path / "wide"), CacheTeacherLMSpec(DEMO_PROMPT, {**CACHE, **SAMPLED}, MAX_LENGTH)

    def run(seed: int, pointer: str) -> dict:
        spec.cache["seed"] = seed
        return cache_teacher_lm(wide, wide, lm / "data", tmp_path / "store", tmp_path / pointer, spec)

    manifest = run(5, "ptr.json")
    ids, starts, cached, _ = read_cache(open_pointer(tmp_path / "ptr.json"))
    bits = math.ceil(math.log2(manifest["teacher_vocab_size"]))
    assert manifest["bytes_per_token"] == math.ceil(12 * bits / 8) + math.ceil(12 * 4 / 8) + 4  # ids, counts, entropy
    with torch.no_grad():
        logits = torch.cat(
            [teacher(torch.tensor([s])).logits[0, r - 1 : -1].float() for s, r in zip(ids, starts, strict=True)]
        )
    sample_ids = torch.cat([c["sample_ids"] for c in cached])
    counts = torch.cat([c["sample_counts"] for c in cached]).float()
    assert (counts.sum(-1) == 12).all() and len(logits) == manifest["response_tokens"]
    stats = {}
    for t in (2.0, 1.0):
        log_p = (logits / t).log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        drawn = (counts * log_p.gather(-1, sample_ids)).sum(-1) / 12  # mean log p_T of a row's draws
        var = (log_p.exp() * log_p**2).sum(-1) - entropy**2  # Var_v~p_T[log p_T(v)]
        gap = (drawn + entropy).sum().item()
        stats[t] = (gap, 5 * (var / 12).sum().sqrt().item(), entropy)
    assert abs(stats[2.0][0]) < stats[2.0][1], stats
    assert abs(stats[1.0][0]) > 3 * stats[1.0][1], stats  # drawn at T = 2, they are not p_1's draws
    cached_entropy = torch.cat([c["teacher_entropy"] for c in cached])
    torch.testing.assert_close(cached_entropy, stats[2.0][2], rtol=1e-4, atol=1e-4)
    from kdsweep.translation.report import cache_line

    distinct = (counts > 0).sum(-1).double().mean()
    ess = (counts.sum(-1) ** 2 / (counts**2).sum(-1)).double().mean()
    assert 1 < ess <= distinct < 12  # repeated draws of likely tokens
    assert cache_line(manifest) == (
        f"Teacher cache: 12 tokens drawn per response token from the teacher at temperature 2 (method sampled, seed 5), "
        f"{len(logits)} response tokens, {manifest['bytes_per_token']} bytes/token, {distinct:.2f} distinct ids and "
        f"an effective sample size of {ess:.2f} per token, targets: reference."
    )
    other = run(6, "other.json")
    assert other["key"] != manifest["key"]
    other_ids = torch.cat([c["sample_ids"] for c in read_cache(open_pointer(tmp_path / "other.json"))[2]])
    assert (other_ids != sample_ids).any(-1).float().mean() > 0.5


def test_sampled_draws_do_not_depend_on_the_batching(lm, tmp_path):
    """The same sampled cache built with other batch sizes, chunk sizes and without packing (not
    part of the key: they change the layout, not the values) draws the same tokens for every
    token row but the rare one whose float rounding moves a draw across a token boundary."""
    runs = [{}, {"batch_size": 7, "chunk_size": 5}, {"batch_size": 32, "packing": False}]
    cached = []
    for i, layout in enumerate(runs):
        spec = CacheTeacherLMSpec(
            DEMO_PROMPT, {**CACHE, **SAMPLED, **{k: v for k, v in layout.items() if k != "packing"}}, MAX_LENGTH,
            packing=layout.get("packing", True),
        )  # fmt: skip
        teacher = str(lm / "teacher")
        manifest = cache_teacher_lm(teacher, teacher, lm / "data", tmp_path / f"s{i}", tmp_path / f"p{i}.json", spec)
        assert i == 0 or manifest["key"] == cached[0][0]
        rows = read_cache(open_pointer(tmp_path / f"p{i}.json"))[2]
        cached.append((manifest["key"], *(torch.cat([r[k] for r in rows]) for k in ("sample_ids", "sample_counts"))))
    _, ids, counts = cached[0]
    for _, other_ids, other_counts in cached[1:]:
        same = ((other_ids == ids) & (other_counts == counts)).all(-1).float().mean().item()
        assert same > 0.995, same


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
        "distill": {"loss": "forward_kl", "tail": "ignore", "chunk_size": 64, "training": {}},
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
    ids, starts, _, _ = read_cache(open_pointer(tmp_path / "p.json"))
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


@pytest.mark.parametrize(
    "method, temperature",
    [("topk", 1.0), ("sampled", 1.0), ("sampled", 2.0)],
    ids=["topk-V", "sampled-T1", "sampled-T2"],
)
def test_self_distillation_through_the_cache_is_aligned(lm, tmp_path, method, temperature):
    """Student = teacher. Top-k with k = V at T = 1: the per-token forward KL through the real
    cache and the trainer's response rows is ~0. Sampled (12 draws at T): the KL estimate's mean
    is 0 within 4 standard errors, its variance from the teacher's own distributions (written out
    here: Var_v~p_T[log p_T(v)] / 12 per token). Either cache's rows shifted by one position give a
    large KL. (A teacher with a wide initialization, so each position's distribution is its own.)"""
    from kdsweep.core.trainer import DistillTrainer, training_arguments
    from kdsweep.translation.batching import TranslationCollator, TranslationExamples
    from kdsweep.translation.loss import TokenKD
    from kdsweep.translation.teacher import read_cache

    tok = load_lm_tokenizer(str(lm / "teacher"))
    teacher = causal_lm_from_config(tiny_llama(2, initializer_range=0.3), tok, seed=1)
    teacher.save_pretrained(tmp_path / "wide")
    tok.save_pretrained(tmp_path / "wide")
    vocab = teacher.config.vocab_size
    own = {"top_k": vocab} if method == "topk" else {"method": "sampled", "draws": 12, "temperature": temperature}
    spec = CacheTeacherLMSpec(prompt=DEMO_PROMPT, cache={**CACHE, **own}, max_length=MAX_LENGTH)
    wide = str(tmp_path / "wide")
    cache_teacher_lm(wide, wide, lm / "data", tmp_path / "store", tmp_path / "ptr.json", spec)
    ids, starts, cached, _ = read_cache(open_pointer(tmp_path / "ptr.json"))
    if method == "topk":
        assert cached[0]["topk_logprobs"].shape[-1] == vocab
    shifted = [{k: torch.cat([t[1:], t[:1]]) for k, t in rows.items()} for rows in cached]
    cfg = lm_training()
    kl = {}
    for name, rows in (("aligned", cached), ("shifted", shifted)):
        data = TranslationExamples(ids, starts, rows)
        trainer = DistillTrainer(
            model=load_causal_lm(str(tmp_path / "wide")),
            args=training_arguments(cfg, 1e-3, tmp_path / name),
            train_dataset=data,
            eval_dataset=data,
            data_collator=TranslationCollator(tok.pad_token_id, MAX_LENGTH),
            loss=TokenKD(alpha=1.0, temperature=temperature),
        )
        batch = trainer.data_collator([data[i] for i in range(16)])
        with torch.no_grad():
            _, parts, count, _ = trainer.loss_terms(trainer.model, batch)
            # The student's CE, computed here example by example (no packing): the logits at
            # positions start-1 .. L-2 predict the response tokens start .. L-1.
            logits = [trainer.model(torch.tensor([ids[i]])).logits[0, starts[i] - 1 : -1] for i in range(16)]
            ce = sum(F.cross_entropy(logits[i], torch.tensor(ids[i][starts[i] :]), reduction="sum") for i in range(16))
        assert count == sum(len(ids[i]) - starts[i] for i in range(16))
        assert parts["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
        kl[name] = parts["kd"].item() / count
    if method == "topk":
        assert abs(kl["aligned"]) < 1e-3, kl  # fp16 log-probabilities: ~1e-5
    else:
        log_p = torch.cat(logits).float().div(temperature).log_softmax(-1)
        var = (log_p.exp() * log_p**2).sum(-1) - (log_p.exp() * log_p).sum(-1) ** 2  # of log p_T(v), v ~ p_T
        standard_error = temperature**2 * (var / 12).sum().sqrt().item() / count
        assert abs(kl["aligned"]) < 4 * standard_error, (kl, standard_error)
        assert 4 * standard_error < kl["shifted"] / 4, (kl, standard_error)  # the bound tells a shift apart
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


@pytest.mark.parametrize("method", ["topk", "sampled"])
def test_a_teacher_giving_non_finite_values_is_not_cached(lm, tmp_path, method):
    model = load_causal_lm(str(lm / "teacher"))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "broken")
    load_lm_tokenizer(str(lm / "teacher")).save_pretrained(tmp_path / "broken")
    with pytest.raises(
        RuntimeError,
        match=r"cache shard 1/4: the teacher gave non-finite values \(non-finite logits\) on training examples 0..29",
    ):
        cache = {**CACHE, "method": method, "draws": 12, "temperature": 1.0}
        broken, spec = str(tmp_path / "broken"), CacheTeacherLMSpec(DEMO_PROMPT, cache, MAX_LENGTH)
        cache_teacher_lm(broken, broken, lm / "data", tmp_path / "store", tmp_path / "ptr.json", spec)
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
    fmt = entry_format(entry)
    ids = bitpack.unpack_rows(shard["topk_ids"].numpy(), fmt.index_bits, fmt.top_k)
    ids[3, 2] = entry.manifest()["teacher_vocab_size"] + 5  # fits the bits: 10 bits hold up to 1023
    shard["topk_ids"] = torch.from_numpy(bitpack.pack_rows(ids, fmt.index_bits))
    entry.write_shard(index, shard)


DAMAGE = {
    "truncated": (_truncate, "unreadable"),
    "flipped byte": (_flip_a_byte, r"tensor '\w+' fails its checksum"),
    "NaN": (_nan_logprob, r"non-finite top-k log-probabilities in 1 of \d+ token rows \(the first: row 5\)"),
    "index out of range": (
        _index_outside_the_vocabulary,
        r"top-k ids outside the teacher's vocabulary in 1 of \d+ token rows \(the first: row 3\)",
    ),
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


def test_distillation_refuses_a_temperature_other_than_the_sampled_caches(lm, tmp_path):
    """A sampled cache passed by hand (the config check bypassed): the distill job refuses a sweep
    point at another temperature, or another divergence, before any training."""
    from kdsweep.translation.distill import DistillLMSpec, distill_student_lm

    run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json", **SAMPLED)  # drawn at T = 2
    for point, distill, message in [
        (
            {"temperature": 1.0},
            {},
            r"sweep.temperature: 1, but the sampled teacher cache drew its tokens at temperature 2",
        ),
        (
            {"temperature": 2.0},
            {"loss": "reverse_kl"},
            r"translation.distill.loss: reverse_kl; a sampled teacher cache",
        ),
        ({"temperature": 2.0}, {"tail": "bucket"}, r"translation.distill.tail: bucket applies to a top-k cache"),
    ]:
        spec = distill_spec(MAX_LENGTH)
        spec["point"] |= point
        spec["distill"] |= distill
        with pytest.raises(ValueError, match=message):
            distill_student_lm(
                str(lm / "teacher"), str(lm / "teacher"), lm / "data", tmp_path / "ptr.json",
                tmp_path / "out", tmp_path / "log.jsonl", tmp_path / "ckpt", DistillLMSpec(**spec),
            )  # fmt: skip
        assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


def test_a_cache_from_before_the_methods_names_its_rebuild():
    """An entry written before issue 17 (no method in its key, int32 ids) is not read as a top-k
    cache: the error names the command that rebuilds it."""
    from kdsweep.translation.cache_format import cache_format

    with pytest.raises(ValueError, match=r"without a known method \(None.*snakemake --forcerun cache_teacher_lm"):
        cache_format({"kind": "lm_topk", "top_k": 64, "value_dtype": "float16"}, 128_256)


def test_keep_best_keeps_the_checkpoint_of_the_lowest_dev_loss(lm, tmp_path):
    """training.keep: best in the translation family compares the eval loss (the student's CE on
    the dev responses): a training that turns bad after step 3 (its loss negated: gradient ascent,
    no momentum) writes the weights of the step with the lowest logged eval_loss, which its
    kdsweep.json records."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from kdsweep.core import provenance
    from kdsweep.core.trainer import DistillTrainer, train_and_save, training_arguments
    from kdsweep.translation.batching import TranslationCollator, TranslationExamples
    from kdsweep.translation.loss import TokenKD

    class TurnsWrong(TokenKD):
        def __call__(self, trainer, model, inputs):
            total, parts, count, outputs = super().__call__(trainer, model, inputs)
            if model.training and trainer.state.global_step >= 3:
                total = -total
            return total, parts, count, outputs

    class CopyCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            weights = tmp_path / "checkpoints" / f"checkpoint-{state.global_step}" / "model.safetensors"
            (tmp_path / "copies").mkdir(exist_ok=True)
            (tmp_path / "copies" / f"{state.global_step}.safetensors").write_bytes(weights.read_bytes())

    run_cache(lm, lm / "data", tmp_path / "store", tmp_path / "ptr.json")
    ids, starts, _, _ = read_cache(open_pointer(tmp_path / "ptr.json"))
    data = TranslationExamples(ids[:16], starts[:16])
    tok = load_lm_tokenizer(str(lm / "teacher"))
    cfg = lm_training(keep="best", max_steps=7, batch_size=8, logging_steps=1, eval_steps=1, save_steps=1, seed=1)
    args = training_arguments(cfg, 1e-2, tmp_path / "checkpoints")
    args.adam_beta1 = 0.0
    trainer = DistillTrainer(
        model=load_causal_lm(str(lm / "teacher")),
        args=args,
        train_dataset=data,
        eval_dataset=data,
        data_collator=TranslationCollator(tok.pad_token_id, MAX_LENGTH),
        callbacks=[CopyCheckpoints()],
        loss=TurnsWrong(alpha=0.0),
    )
    train_and_save(trainer, {"job": "keep best"}, tmp_path / "model", tmp_path / "log.jsonl", tokenizer=tok)
    losses = {}
    for entry in read_jsonl(tmp_path / "log.jsonl"):
        if "eval_loss" in entry:
            losses.setdefault(entry["step"], entry["eval_loss"])
    best = min(losses, key=lambda step: (losses[step], step))
    assert sorted(losses) == list(range(1, 8)) and 1 < best < 7, losses
    kept = provenance.kept(tmp_path / "model")
    assert kept == {"policy": "best", "step": best, "metric": "eval_loss", "value": losses[best]}
    saved, copy = (
        load_file(tmp_path / "model" / "model.safetensors"),
        load_file(tmp_path / "copies" / f"{best}.safetensors"),
    )
    assert saved.keys() == copy.keys() and all(torch.equal(saved[k], copy[k]) for k in saved)
