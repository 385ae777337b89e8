"""PruningRecord: JSON, replay on a fresh dense model, save/load with weights_only."""

from __future__ import annotations

import json

import pytest
import torch

import pruning
from pruning.record import PruningRecord, RecordEntry
from tests.pruning.test_graph import Concat, LayerScale, OptionA, X
from tests.pruning.test_structured import outputs, seq_net


def pruned(builder, ratio=0.5):
    torch.manual_seed(0)
    model = builder()
    return model, pruning.prune_filters(model, X if builder is not seq_net else torch.randn(1, 3, 16, 16), ratio)


def test_record_entries_say_what_was_cut():
    model, record = pruned(Concat)
    e = {(x.name, x.dim): x for x in record.entries}
    assert e[("a", 0)].size == 4 and len(e[("a", 0)].keep) == 2
    assert e[("c", 1)].size == 10 and len(e[("c", 1)].keep) == 5
    assert e[("bn", 0)].keep == e[("c", 1)].keep  # BN and the consumer lose the same channels
    assert record.shapes["c.weight"] == list(model.c.weight.shape) == [2, 5, 1, 1]
    assert record.channels()["a"] == (2, 4)


def test_record_shapes_are_the_state_dict_shapes_of_cut_modules():
    model, record = pruned(OptionA)
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    cut = {e.name for e in record.entries}
    assert record.shapes == {k: v for k, v in state.items() if k.rpartition(".")[0] in cut}
    assert "bn.num_batches_tracked" in record.shapes and "conv2.weight" in record.shapes


def test_json_roundtrip_is_lossless():
    _, record = pruned(OptionA)
    text = json.dumps(record.to_dict())
    back = PruningRecord.from_dict(json.loads(text))
    assert back == record and PruningRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize("builder", [Concat, OptionA, LayerScale])
def test_replay_then_strict_load_gives_identical_outputs(builder):
    model, record = pruned(builder)
    torch.manual_seed(1)  # a different initialisation: the weights come from the state dict
    fresh = pruning.apply_record(builder(), record.to_dict())
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(outputs(fresh, X), outputs(model, X))


def test_save_and_load_with_weights_only(tmp_path):
    model, record = pruned(LayerScale)
    path = tmp_path / "m.pt"
    pruning.save_pruned(model, record, path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "version", "record", "state_dict"}
    loaded = pruning.load_pruned(LayerScale, path)
    assert loaded.gamma.shape == (4, 1, 1)
    assert torch.equal(outputs(loaded, X), outputs(model, X))
    assert pruning.read_record(path) == record


def test_load_refuses_other_files(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a prunekit pruned-model file"):
        pruning.load_pruned(seq_net, path)


def test_newer_versions_are_refused():
    with pytest.raises(ValueError, match="newer"):
        PruningRecord.from_dict({"version": 99, "entries": []})


def test_replay_checks_names_and_sizes():
    _, record = pruned(seq_net)
    bad = PruningRecord([RecordEntry("features.7", "module", 0, (0,), 4)])
    with pytest.raises(TypeError, match="no pruning handler"):
        pruning.apply_record(seq_net(), bad)
    with pytest.raises(ValueError, match="does not have"):
        pruning.apply_record(seq_net(), PruningRecord([RecordEntry("nope", "module", 0, (0,), 4)]))
    wrong = PruningRecord(record.entries, {"features.0.weight": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match="shapes differ"):
        pruning.apply_record(seq_net(), wrong)


def test_chained_steps_replay_in_order(tmp_path):
    model, r1 = pruned(seq_net, 0.25)
    r2 = pruning.prune_filters(model, torch.randn(1, 3, 16, 16), 0.5)
    path = tmp_path / "two.pt"
    pruning.save_pruned(model, r1 + r2, path)
    loaded = pruning.load_pruned(seq_net, path)
    assert loaded.features[0].out_channels == 3
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(outputs(loaded, x), outputs(model, x))
