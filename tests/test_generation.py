"""Phases for generation: prefill and decode told apart, by label or by themselves."""

from __future__ import annotations

import warnings

import pytest
import torch

import memwall_plugin as memwall

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("fail_on_deprecations")


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2)).eval()


@pytest.mark.parametrize("pass_model", [True, False])
def test_generate_reports_prefill_and_decode_separately(gpt2, pass_model):
    prompt = torch.randint(0, 1000, (1, 64))
    new_tokens = 16
    with memwall.profile(model=gpt2 if pass_model else None, summary=False) as prof:
        gpt2.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    rep = prof.report()
    phases = {g.key: g for g in rep.group_by("phase")}
    assert {"prefill", "decode"} <= set(phases)
    assert "forward" not in phases  # every model call was one or the other
    # one lm_head matmul per model call: 1 in prefill, new_tokens - 1 in decode
    lm_head = {r.phase: r.calls for r in rep.rows if r.module == "lm_head" and r.op == "aten.mm"}
    assert lm_head == {"prefill": 1, "decode": new_tokens - 1}
    assert phases["decode"].intensity < phases["prefill"].intensity / 5


@pytest.mark.parametrize("pass_model", [True, False])
def test_assisted_generation_keeps_the_assistant_apart_from_the_model(gpt2, pass_model):
    """generate(assistant_model=...) (speculative decoding): the assistant is held by no layer of
    the model and, without model=, runs first. It was the root named "": its `lm_head` and
    `transformer.h.0` were the model's own rows, and the model's read `target.lm_head`. The
    truth: each model's own matmul shapes (the assistant's width 64, the model's 768), with and
    without model=."""
    torch.manual_seed(1)
    assistant = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2)).eval()
    prompt = torch.randint(0, 1000, (1, 16))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, assistant_model=assistant)
    bare = gpt2.generate(prompt, **kwargs)
    with memwall.profile(model=gpt2 if pass_model else None, summary=False) as prof:
        seen = gpt2.generate(prompt, **kwargs)
    assert torch.equal(bare, seen)
    rep = prof.report()
    heads = {(r.module, r.shapes.split(" x ")[1]) for r in rep.rows
             if r.op == "aten.mm" and r.module.endswith("lm_head")}
    # with model= given too: the assistant is a second model, called outside it (its ops read
    # at the top level until 2026-12-07)
    assert heads == {("lm_head", "[768, 50257]"), ("assistant_model.lm_head", "[64, 50257]")}
    assert {r.phase for r in rep.rows if r.module.startswith("assistant_model.")} <= {"prefill", "decode"}
    assert {r.phase for r in rep.rows if r.module == "lm_head"} == {"prefill", "decode"}


def test_decoding_folds_its_growing_kv_lengths_and_counts_exactly_what_every_length_apart_counts(gpt2, monkeypatch):
    """A 2-layer GPT-2 generating 64 tokens: each token is a new KV length for the attention's
    cat and matmuls (and for generate()'s own bookkeeping around the model). Folded by design
    into power-of-two buckets (no warning), with the totals of a run that keeps every length apart."""
    from memwall_plugin.hooks.capture import Capture

    prompt = torch.randint(0, 1000, (1, 4))

    def run() -> memwall.Report:
        with memwall.profile(model=gpt2, summary=False) as prof:
            gpt2.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
        return prof.report()

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        folded = run()
    monkeypatch.setattr(Capture, "_grown", lambda self, *args: None)
    apart = run()
    # the ops that see the KV length fold 64 lengths into 8 buckets; rows of other ops are alike
    # (566 rows against 224 here, 2026-12-08)
    assert len(apart.rows) > 2 * len(folded.rows)
    cats = [r for r in folded.rows if r.op == "aten.cat" and r.module == "transformer.h.0.attn" and r.phase == "decode"]
    assert 2 <= len(cats) <= 2 * (1 + 7)  # keys and values: the first length exact, then 1, 2, 4 ... 64
    assert any("<=64" in r.shapes for r in cats)
    assert folded.total_flops == apart.total_flops
    assert folded.total_bytes == apart.total_bytes
    assert sum(r.calls for r in folded.rows) == sum(r.calls for r in apart.rows)
    by_phase = {g.key: (g.flops, g.bytes, g.calls) for g in folded.group_by("phase")}
    assert by_phase == {g.key: (g.flops, g.bytes, g.calls) for g in apart.group_by("phase")}


@pytest.mark.parametrize("how", ["argument", "config"])
def test_generation_without_a_cache_is_a_finding_with_what_it_recomputed(gpt2, how):
    """generate() with use_cache=False (passed, or left in the config by a fine-tuning script)
    calls the model over the whole sequence each time: every call read prefill and nothing said
    the cache was off. The truth: the model's calls and their input lengths, seen by a forward
    pre-hook of the test's own, and the same generate() with its cache, which the finding is
    not given."""
    prompt = torch.randint(0, 1000, (2, 8))
    new_tokens = 6
    lengths: list[int] = []
    handle = gpt2.register_forward_pre_hook(lambda m, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                            with_kwargs=True)
    kwargs = {"use_cache": False} if how == "argument" else {}
    before = gpt2.generation_config.use_cache
    if how == "config":
        gpt2.generation_config.use_cache = False
    try:
        with memwall.profile(model=gpt2, summary=False) as prof:
            gpt2.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)
    finally:
        handle.remove()
        gpt2.generation_config.use_cache = before
    assert lengths == list(range(8, 8 + new_tokens))  # the whole sequence, each call
    rep = prof.report()
    assert rep.extra["generation_without_cache"] == [
        {"calls": new_tokens, "first_tokens": 8, "last_tokens": 8 + new_tokens - 1, "token_passes": sum(lengths)}]
    from memwall_plugin.console import findings
    (note,) = [f for f in findings(rep) if "without a KV cache" in f]
    assert f"{sum(lengths)} token positions" in note and "use_cache=True" in note
    with memwall.profile(model=gpt2, summary=False) as cached:
        gpt2.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    assert "generation_without_cache" not in cached.report().extra
    assert not [f for f in findings(cached.report()) if "without a KV cache" in f]


def test_user_labels_win_and_restore(gpt2):
    x = torch.randint(0, 1000, (1, 8))
    with memwall.profile(model=gpt2, summary=False) as prof:
        with prof.phase("warmup_pass"):
            gpt2(x)
        gpt2(x)
        prof.phase("decode")
        gpt2(x)
        prof.phase(None)
    phases = {r.phase for r in prof.report().rows}
    assert {"warmup_pass", "forward", "decode"} <= phases
    with pytest.raises(ValueError, match="short name"):
        with memwall.profile(summary=False) as prof:
            prof.phase("not a name")


def test_summary_says_decode_is_far_below_prefill(gpt2):
    prompt = torch.randint(0, 1000, (1, 32))
    with memwall.profile(model=gpt2, summary=False) as prof:
        gpt2.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    notes = memwall.findings(prof.report())
    assert any(n.startswith("decode runs at") for n in notes)


class _KVCache:
    """A cache as any library might write one: holds per-layer keys and says how long it is."""

    def __init__(self, length: int) -> None:
        self.keys = [torch.zeros(1, 2, length, 4)]

    def get_seq_length(self) -> int:
        return self.keys[0].shape[-2]


class _StateCache:
    """A cache of recurrent state only (Mamba's): it cannot say a length."""

    def __init__(self, filled: bool) -> None:
        self.layers = [{"conv": torch.zeros(1, 8, 4) if filled else None}]

    def get_seq_length(self) -> int:
        raise ValueError("no attention layers")


@pytest.mark.parametrize("args,kwargs,phase", [
    ((), {"input_ids": torch.zeros(1, 4)}, None),  # plain inference keeps no cache
    ((), {"use_cache": True}, "prefill"),  # the model will make one
    ((), {"cache": _KVCache(0)}, "prefill"),  # transformers 5.x's name
    ((), {"past_key_values": _KVCache(7)}, "decode"),  # transformers 4.x's name
    ((), {"kv": _KVCache(7)}, "decode"),  # any name
    ((torch.zeros(1, 1), _KVCache(3)), {}, "decode"),  # passed by position
    ((), {"past_key_values": ((torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4)),)}, "decode"),  # legacy tuples
    ((), {"past_key_values": ((torch.zeros(1, 2, 0, 4), torch.zeros(1, 2, 0, 4)),)}, "prefill"),
    ((), {"cache_params": _StateCache(False)}, "prefill"),
    ((), {"cache": _StateCache(True)}, "decode"),
])
def test_a_generation_step_is_recognised_by_its_cache_not_its_argument_name(args, kwargs, phase):
    from memwall_plugin.hooks.modules import generation_phase

    assert generation_phase(args, kwargs) == phase


def test_a_recurrent_state_given_back_makes_the_step_decode():
    """RWKV's generate() gives each step back the `state` its last step returned, a plain list of
    tensors that no cache class holds: every step read as prefill. A step given back a list of
    tensors the model's last generation step returned is a decode step, and that state is its
    cache."""
    torch.manual_seed(0)
    config = transformers.RwkvConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, attention_hidden_size=64,
                                     intermediate_size=128, context_length=32, bos_token_id=1, eos_token_id=2)
    model = transformers.RwkvForCausalLM(config).eval()
    prompt, new_tokens = torch.randint(0, 128, (1, 8)), 4
    with torch.no_grad():
        bare = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        state = model(prompt, use_cache=True).state
        with memwall.profile(model=model, summary=False) as prof:
            got = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    assert torch.equal(got, bare)
    rep = prof.report()
    head = {r.phase: r.calls for r in rep.rows if r.module == "head" and r.op == "aten.mm"}
    assert head == {"prefill": 1, "decode": new_tokens - 1}
    assert rep.memory is not None
    assert rep.memory.peak_by_category["kv_cache"] == sum(t.nbytes for t in state) > 0


def _cache_bytes(cache) -> int:
    """Bytes of the distinct storages of the tensors in a generation cache (legacy tuples, Cache
    objects, an encoder-decoder's pair of them), walked here apart from memwall."""
    seen, stack, total = set(), [cache], 0
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            stack.extend(vars(value).values())
    return total


def test_beam_searchs_reordered_cache_stays_the_kv_cache_in_every_decode_step():
    """Beam search reorders the cache between model calls (index_select by beam): the new tensors
    were made outside the model, as `other`, and were the KV cache again only when a step
    returned them, so most of each decode step read 0 bytes of KV cache. The truth: the cache
    handed to each model call, measured by a forward pre-hook."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=128)
    model = transformers.GPT2LMHeadModel(config).eval()
    prompt = torch.randint(0, 100, (1, 24))
    kwargs = dict(num_beams=3, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    bare = model.generate(prompt, **kwargs)
    handed: list[int] = []

    def hook(module, args, kw):
        cache = kw.get("past_key_values", kw.get("cache"))
        handed.append(_cache_bytes(cache) if cache is not None else 0)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with memwall.profile(model=model, summary=False) as prof:
            got = model.generate(prompt, **kwargs)
    finally:
        handle.remove()
    assert torch.equal(got, bare)
    mem = prof.report().memory
    kv = [values[4] for _, phase, values, _ in mem.timeline if phase == "decode"]
    first_decode = min(b for b in handed if b)  # the cache the first decode call is given
    assert kv and min(kv) >= first_decode, (min(kv), first_decode)
    # at most the cache handed in, the one the call returns (a token longer) and its reorder, alive
    # at once (with transformers 4's legacy tuples all three, for a moment)
    grown = max(handed) + (handed[-1] - handed[-2])
    assert max(kv) <= 3 * grown


def test_an_encoder_decoder_cache_is_the_kv_cache():
    """BART's generate() keeps an EncoderDecoderCache (self-attention and cross-attention caches,
    each of per-layer tensors): its tensors lay deeper than memwall looked, and the KV cache
    read 0. The truth: the returned cache's tensors' bytes."""
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=64)
    model = transformers.BartForConditionalGeneration(config).eval()
    source = torch.randint(3, 96, (1, 12))
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, num_beams=1, do_sample=False,
                  return_dict_in_generate=True)
    with memwall.profile(model=model, summary=False) as prof:
        out = model.generate(source, **kwargs)
    truth = _cache_bytes(out["cache"] if "cache" in out else out["past_key_values"])  # renamed in transformers 5.25
    mem = prof.report().memory
    kv = max(values[4] for _, _, values, _ in mem.timeline)
    assert truth <= kv < 2 * truth, (kv, truth)


def test_a_padded_batchs_growing_attention_mask_folds_like_the_kv_lengths(gpt2, monkeypatch):
    """A left-padded batch hands attention its mask as a keyword argument ([b, 1, 1, length]),
    which grows with each token like the KV cache: keyed verbatim, every length was a row of its
    own (a serving batch's report grew with every token). Folded now, with the counts of a run
    that keeps every length apart."""
    from memwall_plugin.hooks.capture import Capture

    torch.manual_seed(0)
    prompt = torch.randint(3, 1000, (2, 6))
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0  # the first sequence is 3 tokens shorter, padded on the left

    def run() -> memwall.Report:
        with memwall.profile(model=gpt2, summary=False) as prof:
            gpt2.generate(prompt, attention_mask=mask, max_new_tokens=48, min_new_tokens=48, do_sample=False,
                          pad_token_id=0)
        return prof.report()

    folded = run()
    monkeypatch.setattr(Capture, "_grown", lambda self, *args: None)
    apart = run()

    def decode_attention(rep: memwall.Report) -> list[memwall.Row]:
        return [r for r in rep.rows if r.phase == "decode" and r.module == "transformer.h.0.attn"
                and "attention" in r.op]

    if not decode_attention(apart):  # transformers' eager attention: the mask is added positionally
        pytest.skip("this transformers' GPT-2 gives attention no mask argument")
    assert len(decode_attention(apart)) >= 40
    assert len(decode_attention(folded)) <= 1 + 6  # the first length exact, then 8, 16, 32, 64 ...
    assert folded.total_flops == apart.total_flops
    assert folded.total_bytes == apart.total_bytes
