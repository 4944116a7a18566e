"""The mixing engine against PEFT and against merged-weight references, on a tiny random Llama."""
import threading

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from experts.base_model import load_base_model
from experts.engine import TorchBackend
from experts.generation import SamplingConfig, generate
from experts.mixing import LoraGroup, RoutingError, cut_runs
from experts.prompt import chat_prompt
from tests.tiny import save_random_adapter

ATOL, RTOL = 1e-4, 1e-4
QUESTIONS = ["What is compound interest?", "Reverse a list?", "fever", "Is a verbal contract binding in court?",
             "brown fox", "What causes a fever and how long does it last?", "0123", "lazy dog jumps"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Three experts: mixed ranks, and one that adapts only q/v."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": save_random_adapter(tiny_model_dir, root / "a", rank=4, seed=1),
        "b": save_random_adapter(tiny_model_dir, root / "b", rank=8, seed=2),
        "c": save_random_adapter(tiny_model_dir, root / "c", rank=2, targets=["q_proj", "v_proj"], seed=3),
    }


@pytest.fixture
def backend(tiny_base, adapters):
    backend = TorchBackend(tiny_base)
    for name, folder in adapters.items():
        backend.add_expert(name, folder)
    return backend


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir, adapters):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapters["a"], adapter_name="a")
    for name in ("b", "c"):
        model.load_adapter(adapters[name], adapter_name=name)
    return model.eval()


def batch(tokenizer, questions):
    enc = tokenizer([chat_prompt(tokenizer, q) for q in questions], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    positions = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
    return dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=positions)


@torch.inference_mode()
def our_logits(backend, questions, routes):
    with backend.mixer.routing(routes):
        return backend.base.model(**batch(backend.base.tokenizer, questions)).logits


@torch.inference_mode()
def peft_logits(peft_model, tokenizer, questions, names):
    return peft_model(**batch(tokenizer, questions), adapter_names=names).logits


def merged_model(tiny_model_dir, peft_model, row):
    """A plain model whose weights are W + sum_k g_k s_k B_k A_k for one row's mix."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for name, module in peft_model.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A"):
            target = model.get_submodule(name)
            with torch.no_grad():
                for expert, weight in row:
                    if expert in module.lora_A:
                        target.weight += weight * module.get_delta_weight(expert)
    return model


def assert_rows_close(got, want, mask):
    for b in range(got.shape[0]):
        keep = mask[b].bool()
        torch.testing.assert_close(got[b, keep], want[b, keep], atol=ATOL, rtol=RTOL)


PATTERNS = {
    "identical": ["a"] * 8,
    "distinct": ["a", "b", "c", "__base__", "a", "b", "c", "__base__"],
    "uniform": ["a", "b", "c", "a", "b", "c", "a", "b"],
    "skewed": ["a", "a", "a", "a", "a", "b", "__base__", "c"],
}


def test_adapters_change_the_output(backend):
    base = our_logits(backend, QUESTIONS[:4], [()] * 4)
    for name in "abc":
        mixed = our_logits(backend, QUESTIONS[:4], [((name, 1.0),)] * 4)
        assert not torch.allclose(base, mixed, atol=1e-3), f"expert {name} does not change the logits"


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_top1_rows_equal_peft_each_adapter(backend, peft_model, pattern):
    names = PATTERNS[pattern]
    routes = [() if n == "__base__" else ((n, 1.0),) for n in names]
    ours = our_logits(backend, QUESTIONS, routes)
    want = peft_logits(peft_model, backend.base.tokenizer, QUESTIONS, names)
    assert_rows_close(ours, want, batch(backend.base.tokenizer, QUESTIONS)["attention_mask"])


def test_rows_without_expert_equal_plain_base(backend, tiny_model_dir):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    routes = [((("a", 1.0),) if i % 2 else ()) for i in range(len(QUESTIONS))]
    ours = our_logits(backend, QUESTIONS, routes)
    with torch.inference_mode():
        want = plain(**batch(backend.base.tokenizer, QUESTIONS)).logits
    mask = batch(backend.base.tokenizer, QUESTIONS)["attention_mask"]
    for b in range(0, len(QUESTIONS), 2):
        torch.testing.assert_close(ours[b, mask[b].bool()], want[b, mask[b].bool()], atol=ATOL, rtol=RTOL)
    all_base = our_logits(backend, QUESTIONS, [()] * len(QUESTIONS))
    assert torch.equal(all_base, want), "a batch with no expert must take the exact base path"


WEIGHTED = [
    [(("a", 0.7), ("b", 0.3)), (("b", 0.5), ("c", 0.5)), (("a", 0.2), ("c", 0.8)), ()],
    [(("a", 0.4), ("b", 0.3), ("c", 0.3)), (("c", 1.0),), (("b", 0.9), ("a", 0.1)), (("a", 0.5), ("b", 0.5))],
]


@pytest.mark.parametrize("rows", WEIGHTED)
def test_weighted_rows_equal_merged_weights(backend, peft_model, tiny_model_dir, rows):
    questions = QUESTIONS[: len(rows)]
    ours = our_logits(backend, questions, rows)
    mask = batch(backend.base.tokenizer, questions)["attention_mask"]
    for b, row in enumerate(rows):
        model = merged_model(tiny_model_dir, peft_model, row)
        with torch.inference_mode():
            want = model(**batch(backend.base.tokenizer, [questions[b]])).logits[0]
        torch.testing.assert_close(ours[b, mask[b].bool()], want, atol=ATOL, rtol=RTOL)


FEW_RUNS = [(("a", 1.0),), (("a", 1.0),), (("b", 1.0),), ()]


@pytest.mark.parametrize("rows, path", [(WEIGHTED[0], "_add_stacked"), (WEIGHTED[1], "_add_stacked"),
                                        (FEW_RUNS, "_add_runs")])
def test_one_token_rows_on_either_path_equal_merged_weights(backend, peft_model, tiny_model_dir, rows, path,
                                                            monkeypatch):
    """Decode shape (one token per row): with at least as many runs as experts, all experts in one GEMM gated per
    row; with fewer runs (here two runs over three experts), one GEMM per run. Both must match the merged weights."""
    taken = []
    monkeypatch.setattr(LoraGroup, path, lambda self, *args, original=getattr(LoraGroup, path):
                        taken.append(original(self, *args)))
    ids = torch.tensor([[7 + 3 * b] for b in range(len(rows))])
    with backend.mixer.routing(rows), torch.inference_mode():
        ours = backend.base.model(input_ids=ids).logits
    assert taken, f"this one-token batch should take {path}"
    for b, row in enumerate(rows):
        with torch.inference_mode():
            want = merged_model(tiny_model_dir, peft_model, row)(input_ids=ids[b:b + 1]).logits[0]
        torch.testing.assert_close(ours[b], want, atol=ATOL, rtol=RTOL)


def test_greedy_tokens_of_mixed_batch_equal_each_row_alone(backend):
    routes = [(("a", 1.0),), (("b", 0.6), ("c", 0.4)), (), (("c", 1.0),), (("a", 0.5), ("b", 0.5)), ()]
    questions = QUESTIONS[: len(routes)]
    config = SamplingConfig(max_new_tokens=12, stop_at_eos=False)
    streamed = []
    together = backend.generate(questions, routes, config, lambda step, tokens, done: streamed.append(tokens))
    alone = [backend.generate([q], [r], config)[0] for q, r in zip(questions, routes)]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    assert [list(t) for t in zip(*streamed)] == [o.token_ids for o in together], "the callback sees rows in order"
    assert len({tuple(o.token_ids) for o in together}) > 1, "routes should lead to different generations"


def test_unknown_experts_and_bad_routes_are_rejected(backend):
    with pytest.raises(RoutingError, match="unknown experts \\['zz'\\]"):
        backend.generate(["q"], [(("zz", 1.0),)], SamplingConfig(max_new_tokens=2))
    with pytest.raises(RoutingError, match="at most 4"):
        backend.mixer.check([(("a", 0.2), ("b", 0.2), ("c", 0.2), ("a", 0.2), ("b", 0.2))])
    with pytest.raises(RoutingError, match="finite"):
        backend.mixer.check([(("a", float("nan")),)])
    with pytest.raises(RoutingError, match="2 routes"):
        backend.generate(["q"], [(), ()], SamplingConfig(max_new_tokens=2))


def test_remove_and_add_at_runtime(backend, adapters):
    routes = [(("a", 1.0),), (("b", 1.0),), ()]
    before = our_logits(backend, QUESTIONS[:3], routes)
    backend.remove_expert("b")
    assert backend.experts() == ["a", "c"]
    with pytest.raises(RoutingError):
        our_logits(backend, QUESTIONS[:3], routes)
    after = our_logits(backend, QUESTIONS[:3], [(("a", 1.0),), (), ()])
    torch.testing.assert_close(after[0], before[0], atol=ATOL, rtol=RTOL)
    backend.add_expert("b", adapters["b"])
    torch.testing.assert_close(our_logits(backend, QUESTIONS[:3], routes), before, atol=ATOL, rtol=RTOL)


def test_request_in_flight_keeps_its_experts(backend):
    config = SamplingConfig(max_new_tokens=6)
    expected = backend.generate(QUESTIONS[:2], [(("a", 1.0),), ()], config)
    removal = threading.Thread(target=backend.remove_expert, args=("a",))
    seen = []

    def callback(step, tokens, done):
        if step == 0:
            removal.start()
            removal.join(timeout=0.2)
        seen.append("a" in backend.experts())

    got = backend.generate(QUESTIONS[:2], [(("a", 1.0),), ()], config, callback)
    removal.join()
    assert all(seen) and backend.experts() == ["b", "c"]
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]


def test_added_expert_costs_only_its_own_parameters(tiny_base, tiny_model_dir, adapters):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    backend = TorchBackend(tiny_base)
    params = lambda: sum(p.numel() for p in backend.base.model.parameters())  # noqa: E731
    held = lambda: sum(e.num_parameters for g in backend.mixer.groups for e in g.experts.values())  # noqa: E731
    assert params() == sum(p.numel() for p in plain.parameters()), "the base weights are kept once, as they were"
    backend.add_expert("b", adapters["b"])
    assert held() == backend.mixer.experts["b"] and params() == sum(p.numel() for p in plain.parameters())
    backend.remove_expert("b")
    assert held() == 0


def test_runs_cut_each_slot_into_consecutive_rows_with_one_expert():
    rows = [(("a", 1.0),), (("a", 1.0),), (), (("a", 0.6), ("b", 0.4)), (("b", 0.75), ("c", 0.25)),
            (("b", 0.5), ("c", 0.5)), (("b", 0.0),)]
    got = [(r.expert, r.start, r.stop, r.weight if isinstance(r.weight, float) else r.weight.flatten().tolist())
           for r in cut_runs(rows)]
    assert got == [("a", 0, 2, 1.0), ("a", 3, 4, 0.6), ("b", 4, 6, [0.75, 0.5]), ("b", 3, 4, 0.4), ("c", 4, 6, [0.25, 0.5])]


def test_shared_input_projections_share_one_a_gemm(backend):
    sizes = sorted(g.size for g in backend.mixer.groups)
    assert sizes == [1, 1, 1, 1, 2, 2, 3, 3], "per layer: q/k/v and gate/up share A, o and down alone"


@pytest.mark.real_model
def test_real_model_top1_equals_peft(tmp_path):
    """One expert on the real SmolLM2 base: our mixed batch against PEFT, row by row."""
    base = load_base_model(device="cpu")
    folder = base.folder
    adapter = save_random_adapter(folder, tmp_path / "x", rank=8, targets=["q_proj", "v_proj", "down_proj"],
                                  std=0.02)
    backend = TorchBackend(base)
    backend.add_expert("x", adapter)
    questions = ["What is compound interest?", "Name three symptoms of flu."]
    routes = [(("x", 1.0),), ()]
    ours = our_logits(backend, questions, routes)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                                          adapter, adapter_name="x").eval()
    want = peft_logits(reference, base.tokenizer, questions, ["x", "__base__"])
    assert not torch.allclose(ours[0], want[1], atol=1e-2)
    assert_rows_close(ours, want, batch(base.tokenizer, questions)["attention_mask"])
    tokens = generate(base.model, base.tokenizer, [chat_prompt(base.tokenizer, questions[1])],
                      SamplingConfig(max_new_tokens=8))
    assert backend.generate(questions[1:], [()], SamplingConfig(max_new_tokens=8))[0].token_ids == tokens[0].token_ids
