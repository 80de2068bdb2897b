"""The shared build cache (ccache-like, per input hash, outside the checkout): a
complete build is kept and restored; an incomplete or different one never is."""

from __future__ import annotations

import json
from pathlib import Path

from modelbuild import manifest
from modelbuild.build import (
    KEEP_SHARED,
    STAMP,
    is_up_to_date,
    restore_shared,
    save_shared,
)


def fake_build(out: Path, input_hash: str, card: str = "card") -> Path:
    for m in (*manifest.MODELS, *manifest.OUTPUT_MODELS):
        (out / m / str(manifest.VERSION)).mkdir(parents=True)
        (out / m / str(manifest.VERSION) / "model.onnx").write_bytes(b"onnx " + m.encode())
        (out / m / "manifest.yaml").write_text(f"name: {m}\n")
        (out / m / "MODEL_CARD.md").write_text(card)
    for c in (manifest.CASCADE, manifest.OUTPUT_CASCADE):
        (out / c).mkdir(parents=True)
        (out / c / "manifest.yaml").write_text("cascade\n")
        (out / c / "MODEL_CARD.md").write_text(card)
    (out / STAMP).write_text(json.dumps({"input_hash": input_hash}))
    assert is_up_to_date(out, input_hash)
    return out


def test_a_saved_build_is_restored_into_a_fresh_checkout(tmp_path) -> None:
    shared = tmp_path / "shared"
    save_shared(shared, fake_build(tmp_path / "a" / "models", "h1" * 32, card="from a"), "h1" * 32)
    fresh = tmp_path / "b" / "models"
    fresh.parent.mkdir()
    assert restore_shared(shared, fresh, "h1" * 32)
    assert is_up_to_date(fresh, "h1" * 32)
    assert (fresh / manifest.CASCADE / "MODEL_CARD.md").read_text() == "from a"
    assert not restore_shared(shared, tmp_path / "b" / "other", "h2" * 32)  # other inputs: build


def test_an_incomplete_entry_is_not_restored_and_old_entries_are_pruned(tmp_path) -> None:
    shared = tmp_path / "shared"
    broken = fake_build(tmp_path / "x" / "models", "h9" * 32)
    (broken / manifest.MODELS[0] / "MODEL_CARD.md").unlink()  # no card: not a complete build
    save_shared(shared, broken, "h9" * 32)
    out = tmp_path / "y" / "models"
    out.parent.mkdir()
    assert not restore_shared(shared, out, "h9" * 32) and not out.exists()
    for i in range(KEEP_SHARED + 2):
        save_shared(shared, fake_build(tmp_path / f"b{i}" / "models", f"{i:064d}"), f"{i:064d}")
    assert len([p for p in shared.iterdir() if not p.name.startswith(".")]) == KEEP_SHARED
