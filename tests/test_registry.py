import hashlib
import json
import multiprocessing

import pytest

from experts.registry import LOCK_FILE, REGISTRY_FILE, Registry, RegistryError, check_name


def folder_hash(root):
    """Names and bytes of everything under `root`: equal hashes mean nothing changed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def stage(registry, *, description="d", questions=("Q1?", "Q2?")):
    folder = registry.staging_folder()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 10)
    (folder / "expert.json").write_text(json.dumps({"description": description, "rank": 4, "examples": 2,
                                                    "eval_perplexity": 3.0, "base_perplexity": 5.0}))
    (folder / "questions.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    return folder


def test_add_list_questions_remove(tmp_path):
    registry = Registry(tmp_path)
    assert registry.list() == []
    info = registry.add("med-1", stage(registry, description="medicine"))
    registry.add("law_2", stage(registry))
    assert [e.name for e in registry.list()] == ["med-1", "law_2"]
    assert info.description == "medicine" and info.rank == 4 and info.examples == 2
    assert info.eval_perplexity == 3.0 and info.base_perplexity == 5.0 and info.size_bytes > 10
    assert registry.questions("med-1") == ["Q1?", "Q2?"]
    data = json.loads((tmp_path / REGISTRY_FILE).read_text())
    assert data == {"version": 1, "experts": [{"name": "med-1", "folder": "med-1"}, {"name": "law_2", "folder": "law_2"}]}
    registry.remove("med-1")
    assert registry.names() == ["law_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, "law_2", REGISTRY_FILE]


@pytest.mark.parametrize("name", ["", "Med", "1med", "-x", "med ical", "a" * 41, "médical", "../x", "base",
                                  "general", "__base__"])
def test_bad_and_reserved_names_change_nothing(tmp_path, name):
    registry = Registry(tmp_path)
    registry.add("ok", stage(registry))
    staged = stage(registry)
    before = folder_hash(tmp_path)
    with pytest.raises(RegistryError, match="invalid expert name|reserved"):
        registry.add(name, staged)
    assert folder_hash(tmp_path) == before


def test_good_names():
    for name in ("a", "a" * 40, "med_2-x"):
        assert check_name(name) == name


def test_duplicate_unknown_and_incomplete(tmp_path):
    registry = Registry(tmp_path)
    registry.add("med", stage(registry))
    staged = stage(registry)
    before = folder_hash(tmp_path / "med")
    with pytest.raises(RegistryError, match="already registered"):
        registry.add("med", staged)
    with pytest.raises(RegistryError, match="no expert named 'law'; registered: med"):
        registry.remove("law")
    (staged / "expert.json").unlink()
    with pytest.raises(RegistryError, match="lacks expert.json"):
        registry.add("law", staged)
    (tmp_path / "stray").mkdir()
    with pytest.raises(RegistryError, match="exists but is not registered"):
        registry.add("stray", stage(registry))
    assert folder_hash(tmp_path / "med") == before
    assert json.loads((tmp_path / REGISTRY_FILE).read_text())["experts"] == [{"name": "med", "folder": "med"}]


def test_failed_registry_write_rolls_back(tmp_path, monkeypatch):
    registry = Registry(tmp_path)
    registry.add("med", stage(registry))
    staged = stage(registry)
    before = folder_hash(tmp_path)

    def broken(entries):
        raise OSError("disk full")

    monkeypatch.setattr(registry, "_write", broken)
    with pytest.raises(OSError):
        registry.add("law", staged)
    assert folder_hash(tmp_path) == before
    with pytest.raises(OSError):
        registry.remove("med")
    assert folder_hash(tmp_path) == before


def test_corrupt_registry_file(tmp_path):
    (tmp_path / REGISTRY_FILE).write_text("{broken")
    with pytest.raises(RegistryError, match="not valid JSON"):
        Registry(tmp_path).names()
    (tmp_path / REGISTRY_FILE).write_text('{"version": 1, "experts": [{"name": 3}]}')
    with pytest.raises(RegistryError, match="must hold"):
        Registry(tmp_path).names()


def test_registered_files_are_readable_by_all(tmp_path):
    registry = Registry(tmp_path)
    registry.add("med", stage(registry))
    assert (tmp_path / "med").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "med" / "expert.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / REGISTRY_FILE).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("folder", ["../elsewhere", "/tmp/x", "a/b", ".."])
def test_registry_folders_must_stay_inside_the_experts_folder(tmp_path, folder):
    """A hand-edited folder like "../x" would otherwise let `remove` delete outside the experts folder."""
    (tmp_path / REGISTRY_FILE).write_text(json.dumps({"version": 1, "experts": [{"name": "med", "folder": folder}]}))
    with pytest.raises(RegistryError, match="plain names"):
        Registry(tmp_path).folder("med")


def _add_many(root, prefix, count, start):
    registry = Registry(root)
    start.wait()
    for i in range(count):
        registry.add(f"{prefix}{i}", stage(registry))


def test_concurrent_processes_never_lose_each_others_registrations(tmp_path):
    """Four processes register 25 experts each at once; without the lock, read-modify-write drops some."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    workers = [context.Process(target=_add_many, args=(tmp_path, f"p{w}-", 25, start)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert sorted(Registry(tmp_path).names()) == sorted(f"p{w}-{i}" for w in range(4) for i in range(25))
