"""Tuning the real MiniLM encoder: a standard PEFT adapter that separates the classes, swapped in all-or-nothing."""
import json
import os

import numpy as np
import pytest

from router import SentenceEncoder
from router.heldout import held_out
from router.training import training_set
from router.tuning import POINTER_FILE, TuneConfig, load_encoder, tune_encoder, tuned_classes
from tests.router.fakes import EXAMPLES, GENERAL

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.real_model
QUICK = TuneConfig(epochs=4, batch_size=8)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    report = tune_encoder(EXAMPLES, GENERAL, root, config=QUICK)
    return root, report


@pytest.fixture(scope="module")
def plain():
    return SentenceEncoder()


def _separation(encoder) -> float:
    """Mean cosine of a question to its own class's other questions minus that to other classes' questions."""
    groups = [*EXAMPLES.values(), GENERAL]
    x = encoder.encode([q for g in groups for q in g])
    label = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    sim = x @ x.T
    same = (label[:, None] == label[None, :]) & ~np.eye(len(label), dtype=bool)
    return float(sim[same].mean() - sim[label[:, None] != label[None, :]].mean())


def test_adapter_is_standard_peft_and_pointer_names_it(tuned):
    root, report = tuned
    folder = root / json.loads((root / POINTER_FILE).read_text())["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                        "tuning.json"]
    assert [p.name for p in root.iterdir() if p.is_dir()] == [folder.name]
    assert not [p for p in root.rglob("*") if p.suffix in {".bin", ".pt", ".pkl", ".pickle"}]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"]) == ("LORA", QUICK.rank)
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert report.classes == [*sorted(EXAMPLES), "general"] == tuned_classes(root)
    assert report.steps == int(QUICK.epochs * report.questions / QUICK.batch_size) and np.isfinite(report.final_loss)


def test_held_out_questions_are_left_out_of_tuning_and_known_to_the_encoder(tuned, plain):
    root, report = tuned
    _, texts, _ = training_set(EXAMPLES, GENERAL)
    out = held_out(texts, QUICK.held_out)
    assert 0 < report.held_out == out.sum() and report.questions == len(texts) - out.sum()
    assert (load_encoder(root).tuned_on(texts) == ~out).all()
    assert not plain.tuned_on(texts).any()


def test_a_tuning_without_a_held_out_share_counts_every_question_as_seen(tuned, tmp_path):
    import shutil

    copy = tmp_path / "root"
    shutil.copytree(tuned[0], copy)
    report = _folder(copy, None) / "tuning.json"
    saved = json.loads(report.read_text())
    del saved["config"]["held_out"]
    report.write_text(json.dumps(saved))
    assert load_encoder(copy).tuned_on(GENERAL).all()
    report.unlink()
    assert load_encoder(copy).tuned_on(GENERAL).all()
    report.write_text("{oops")
    with pytest.raises(ValueError, match="has no readable tuning.json"):
        load_encoder(copy)
    assert tuned_classes(copy) is None
    report.write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a JSON object"):
        load_encoder(copy)
    assert tuned_classes(copy) is None


def test_tuned_encoder_separates_the_classes_better(tuned, plain):
    root, _ = tuned
    encoder = load_encoder(root)
    assert encoder.name.startswith(f"{plain.name}+encoder-") and encoder.dim == plain.dim
    x = encoder.encode(["Is a verbal contract binding?"])
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(x, plain.encode(["Is a verbal contract binding?"]), atol=1e-3)
    assert _separation(encoder) > _separation(plain) + 0.05


def test_merged_weights_embed_as_peft_applies_the_adapter(tuned, plain):
    """The load-time merge is exact: PEFT running the adapter unmerged gives the same vectors."""
    from peft import PeftModel

    root, _ = tuned
    merged = load_encoder(root)
    reference = SentenceEncoder()
    transformer = reference._model[0]
    transformer.model = PeftModel.from_pretrained(transformer.model, str(root / merged.name.split("+")[1])).eval()
    texts = ["What does an oncologist treat?", "How do I reverse a list in Python?"]
    assert np.allclose(merged.encode(texts), reference.encode(texts), atol=1e-5)


def test_no_tuned_encoder_means_plain_minilm(tmp_path, plain):
    assert load_encoder(tmp_path).name == plain.name and tuned_classes(tmp_path) is None


def test_broken_pointer_or_adapter_is_a_clear_error(tmp_path, tuned):
    (tmp_path / POINTER_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="encoder.json is unreadable"):
        load_encoder(tmp_path)
    assert tuned_classes(tmp_path) is None
    (tmp_path / POINTER_FILE).write_text(json.dumps({"folder": "../elsewhere"}))
    with pytest.raises(ValueError, match="not an encoder-<sha> folder"):
        load_encoder(tmp_path)
    (tmp_path / "encoder-0123").mkdir()
    (tmp_path / POINTER_FILE).write_text(json.dumps({"folder": "encoder-0123"}))
    with pytest.raises(ValueError, match="lacks adapter_config.json"):
        load_encoder(tmp_path)
    (tmp_path / "encoder-0123" / "adapter_config.json").write_text((_folder(*tuned) / "adapter_config.json").read_text())
    (tmp_path / "encoder-0123" / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot be loaded onto the encoder"):
        load_encoder(tmp_path)


def test_failed_switch_keeps_the_encoder_in_use(tuned, tmp_path, monkeypatch):
    import shutil

    import router.tuning

    root, _ = tuned
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    before = sorted(p.name for p in copy.iterdir())

    def fail(path, write):
        raise OSError("disk full")

    monkeypatch.setattr(router.tuning, "atomic_write", fail)
    with pytest.raises(OSError, match="disk full"):
        tune_encoder(EXAMPLES, GENERAL, copy, config=TuneConfig(epochs=1, batch_size=8, seed=1))
    assert sorted(p.name for p in copy.iterdir()) == before
    assert load_encoder(copy).name == load_encoder(root).name


def test_bad_examples_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="has no questions"):
        tune_encoder({"legal": []}, GENERAL, tmp_path)
    assert not list(tmp_path.iterdir())


def _folder(root, report):
    return root / json.loads((root / POINTER_FILE).read_text())["folder"]


def test_retuning_switches_to_the_new_adapter_and_removes_the_old(tuned, tmp_path):
    import shutil

    root, _ = tuned
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    old = _folder(copy, None)
    report = tune_encoder(EXAMPLES, GENERAL, copy, config=TuneConfig(epochs=1, batch_size=8, seed=1))
    new = _folder(copy, None)
    assert new != old and not old.exists() and [p for p in copy.iterdir() if p.is_dir()] == [new]
    assert json.loads((new / "tuning.json").read_text())["config"]["seed"] == 1 == report.config["seed"]
    assert load_encoder(copy).name == f"all-MiniLM-L6-v2+{new.name}"


def test_tuning_again_repairs_a_broken_pointer(tmp_path):
    (tmp_path / POINTER_FILE).write_text("{not json")
    tune_encoder(EXAMPLES, GENERAL, tmp_path, config=TuneConfig(epochs=1, batch_size=8))
    assert load_encoder(tmp_path).name == f"all-MiniLM-L6-v2+{_folder(tmp_path, None).name}"
