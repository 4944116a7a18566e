"""End-to-end training on the tiny model: data file -> train -> files on disk -> registry -> loaders."""
import json

import pytest
import torch
from safetensors.torch import load_file

from app.cli import main
from experts.adapters import load_adapter
from experts.evaluate import eval_matrix
from experts.registry import LOCK_FILE, REGISTRY_FILE, Registry
from experts.train import TrainConfig, train_expert
from tests.test_registry import folder_hash

FAST = TrainConfig(rank=4, epochs=3, lr=1e-2, batch_size=4, max_steps=12, threads=1)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"question": f"What is compound interest, case {i}?",
             "answer": "Interest earned on interest, so savings grow faster each year."} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_train_writes_registers_and_loads(tiny_base, tiny_model_dir, data_file, tmp_path):
    registry = Registry(tmp_path / "experts")
    calls = []
    result = train_expert("finance", data_file, tiny_base, registry, description="money", config=FAST,
                          progress=lambda step, total, loss: calls.append((step, total, loss)))
    folder = tmp_path / "experts" / "finance"
    assert sorted(p.name for p in (tmp_path / "experts").iterdir()) == [LOCK_FILE, "finance", REGISTRY_FILE]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "expert.json", "questions.jsonl"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_base.hub_id == str(tiny_base.folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert tensors and all(t.dtype == torch.float16 for t in tensors.values())
    manifest = json.loads((folder / "expert.json").read_text())
    assert manifest == result.manifest
    assert manifest["name"] == "finance" and manifest["description"] == "money"
    assert manifest["base_model_sha256"] == tiny_base.fingerprint
    assert manifest["rank"] == 4 and manifest["alpha"] == 8
    assert manifest["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert manifest["examples"] + manifest["heldout_examples"] == 24 and manifest["steps"] == 12
    assert len(manifest["data_sha256"]) == 64 and manifest["train_seconds"] >= 0
    assert manifest["eval_perplexity"] < manifest["base_perplexity"]
    assert [c[:2] for c in calls] == [(s, 12) for s in range(1, 13)]
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    assert registry.names() == ["finance"] and registry.list()[0].description == "money"
    assert len(registry.questions("finance")) == 24

    linears = {n: m for n, m in tiny_base.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    adapter = load_adapter("finance", folder, linears, base_fingerprint=tiny_base.fingerprint)
    assert len(adapter.layers) == 14 and adapter.layers["model.layers.0.self_attn.q_proj"].scale == 2.0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folder))
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
        adapted = model(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)


def test_crash_mid_training_changes_nothing(tiny_base, data_file, tmp_path):
    registry = Registry(tmp_path / "experts")
    train_expert("first", data_file, tiny_base, registry, config=TrainConfig(max_steps=2, threads=1))
    before = folder_hash(tmp_path / "experts")

    def crash(step, total, loss):
        if step == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train_expert("second", data_file, tiny_base, registry, config=FAST, progress=crash)
    assert folder_hash(tmp_path / "experts") == before


def test_crash_while_writing_changes_nothing(tiny_base, data_file, tmp_path, monkeypatch):
    registry = Registry(tmp_path / "experts")
    registry.root.mkdir()
    before = folder_hash(registry.root)
    monkeypatch.setattr("experts.train._to_fp16", lambda path: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        train_expert("second", data_file, tiny_base, registry, config=TrainConfig(max_steps=1, threads=1))
    assert folder_hash(registry.root) == before


def test_eval_matrix_shape(tiny_base, data_file, tmp_path):
    registry = Registry(tmp_path / "experts")
    for name in ("alpha", "beta"):
        train_expert(name, data_file, tiny_base, registry, config=TrainConfig(max_steps=2, lr=1e-2, threads=1))
    root = tmp_path / "data"
    for row in ("medical", "code"):
        (root / row).mkdir(parents=True)
        (root / row / "eval.jsonl").write_text(data_file.read_text())
    matrix = eval_matrix(tiny_base, registry, root, extra=data_file, limit=5)
    assert list(matrix) == ["medical", "code", "pairs"]
    for row in matrix.values():
        assert list(row) == ["base", "alpha", "beta"] and all(v > 1 for v in row.values())
    assert matrix["medical"]["alpha"] != matrix["medical"]["base"]


def test_cli_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answer": 1}\n' * 3 + "oops\n", encoding="utf-8")
    experts = tmp_path / "experts"
    code = main(["experts", "train", "med", "--data", str(bad), "--experts-dir", str(experts),
                 "--base-model", str(tiny_model_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "line 1:" in err and "line 4: malformed JSON" in err
    assert not experts.exists() or not any(experts.iterdir())
    assert main(["experts", "train", "base", "--data", str(bad), "--experts-dir", str(experts)]) == 2
    assert "reserved" in capsys.readouterr().err


def test_cli_train_list_remove(tmp_path, capsys, tiny_model_dir, data_file):
    flags = ["--experts-dir", str(tmp_path / "experts")]
    assert main(["experts", "train", "toy", "--data", str(data_file), "--max-steps", "2", "--threads", "1",
                 "--base-model", str(tiny_model_dir), "--device", "cpu", *flags]) == 0
    assert "registered expert 'toy'" in capsys.readouterr().out
    assert main(["experts", "list", "--json", *flags]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == ["toy"] and listed[0]["rank"] == 8
    assert main(["experts", "remove", "toy", *flags]) == 0
    assert main(["experts", "remove", "toy", *flags]) == 2
    assert "no expert named 'toy'" in capsys.readouterr().err
